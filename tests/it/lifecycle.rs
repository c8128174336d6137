//! Graceful shutdown: SIGTERM lets in-flight requests finish, then the process exits by itself.

use std::time::{Duration, Instant};

use crate::support::{client, eventually, pool, Proxy, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let up = Upstream::start("slow").await;
    let mut proxy = Proxy::builder(&format!(
        "upstreams:\n{}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: pool\n",
        pool("pool", &[up.addr().to_string()], &[])
    ))
    .server("grace_period: 20s")
    .start()
    .await;
    up.set_delay(Duration::from_millis(1000));
    let http = client();
    let url = proxy.url("/slow");
    let slow = tokio::spawn(async move {
        let resp = http.get(url).send().await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| format!("{e:?}"))?;
        Ok::<_, String>((status, body))
    });
    // The request is at the upstream: it is in flight.
    eventually(
        "the slow request to arrive",
        Duration::from_secs(5),
        || async {
            if up.arrivals() == 1 {
                Ok(())
            } else {
                Err(up.arrivals().to_string())
            }
        },
    )
    .await;
    assert_eq!(up.hits(), 0, "not answered yet");
    let signalled = Instant::now();
    proxy.sigterm();

    let (status, body) = slow.await.unwrap().expect("the in-flight request failed");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"upstream\":\"slow\""), "{body}");
    let exit = proxy.wait_exit(Duration::from_secs(15)).await;
    let exit =
        exit.unwrap_or_else(|| panic!("still running 15s after SIGTERM:\n{}", proxy.stderr()));
    assert!(exit.success(), "{exit}:\n{}", proxy.stderr());
    // The grace period is 20s: exiting well before it means it drained, not timed out.
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "{:?}",
        signalled.elapsed()
    );
    // Its access line made it to the file before the exit.
    assert!(
        proxy.access_log().contains("\"status\":200"),
        "{}",
        proxy.access_log()
    );
}
