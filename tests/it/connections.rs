//! Client connections: `server.max_connections`, `server.max_connections_per_ip`,
//! `server.keepalive_timeout`, `server.request_header_timeout`, and what an idle connection
//! costs in memory.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::raw;
use crate::support::{eventually, pool, Proxy, Upstream};

const OPEN: &str = "portcullis_connections_open";
const ACCEPTED: &str = "portcullis_connections_accepted_total";
const REFUSED: &str = "portcullis_connections_refused_total";
const HEADER_TIMEOUTS: &str = "portcullis_connections_header_timeouts_total";

fn body(up: &Upstream) -> String {
    format!(
        "upstreams:\n{}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: pool\n",
        pool("pool", &[up.addr().to_string()], &[])
    )
}

/// A connection to `addr` from the loopback address `from`.
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// One keep-alive request on `stream`; its status.
async fn request(stream: &mut TcpStream) -> Result<u16, String> {
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    raw::try_read_response(stream).await.map(|r| r.status)
}

/// Whether the proxy has closed `stream` (end of file or reset), waiting up to `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn wait_open(proxy: &Proxy, want: f64) {
    eventually(
        "the open-connections gauge",
        Duration::from_secs(10),
        || async {
            let got = proxy.metric(OPEN, &[]).await;
            if got == want {
                Ok(())
            } else {
                Err(format!("{got}, want {want}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_new_connections_are_closed_and_counted() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::builder(&body(&up))
        .server("max_connections: 3")
        .start()
        .await;
    let m = proxy.metrics().await;
    assert_eq!(m.get(REFUSED, &[("reason", "max_connections")]), Some(0.0));
    assert_eq!(
        m.get(REFUSED, &[("reason", "max_connections_per_ip")]),
        Some(0.0)
    );
    wait_open(&proxy, 0.0).await;
    let accepted_before = proxy.metric(ACCEPTED, &[]).await;

    let mut kept = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(request(&mut s).await, Ok(200));
        kept.push(s);
    }
    wait_open(&proxy, 3.0).await;
    let mut fourth = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(
        closed_within(&mut fourth, Duration::from_secs(5)).await,
        "the fourth connection was not closed"
    );
    proxy
        .wait_metric(REFUSED, &[("reason", "max_connections")], 1.0)
        .await;
    // The three stay open and keep working.
    for s in &mut kept {
        assert_eq!(request(s).await, Ok(200));
    }
    assert_eq!(proxy.metric(ACCEPTED, &[]).await - accepted_before, 3.0);
    assert_eq!(proxy.metric(OPEN, &[]).await, 3.0);
    // Once one closes, a new connection gets in.
    drop(kept.pop());
    wait_open(&proxy, 2.0).await;
    let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(request(&mut again).await, Ok(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_per_ip_only_that_ip_is_refused() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::builder(&body(&up))
        .server("max_connections_per_ip: 2")
        .start()
        .await;
    wait_open(&proxy, 0.0).await;
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.1", proxy.addr()).await;
        assert_eq!(request(&mut s).await, Ok(200));
        kept.push(s);
    }
    wait_open(&proxy, 2.0).await;
    let mut third = connect_from("127.0.0.1", proxy.addr()).await;
    assert!(
        closed_within(&mut third, Duration::from_secs(5)).await,
        "the third connection from 127.0.0.1 was not closed"
    );
    proxy
        .wait_metric(REFUSED, &[("reason", "max_connections_per_ip")], 1.0)
        .await;
    // Another address is not held to 127.0.0.1's count.
    let mut other = connect_from("127.0.0.2", proxy.addr()).await;
    assert_eq!(request(&mut other).await, Ok(200));
    for s in &mut kept {
        assert_eq!(request(s).await, Ok(200));
    }
    assert_eq!(
        proxy
            .metric(REFUSED, &[("reason", "max_connections_per_ip")])
            .await,
        1.0
    );
    assert_eq!(proxy.metric(OPEN, &[]).await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keepalive_connection_is_closed_after_keepalive_timeout() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::builder(&body(&up))
        .server("keepalive_timeout: 1s")
        .start()
        .await;
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(request(&mut s).await, Ok(200));
    // Pingora's own keep-alive is 60 s: 20 s would not see it close.
    assert!(
        closed_within(&mut s, Duration::from_secs(20)).await,
        "the idle connection is still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_headers_slowly_is_cut_after_request_header_timeout() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::builder(&body(&up))
        .server("request_header_timeout: 1s")
        .start()
        .await;
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\n").await.unwrap();
    // A header line every 200 ms, never the blank line that ends them: each read comes well
    // within Pingora's own per-read wait, so only a deadline for the whole header cuts it.
    let mut cut = false;
    for i in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if s.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
            || closed_within(&mut s, Duration::from_millis(1)).await
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "still open after 20 s of slow headers");
    proxy.wait_metric(HEADER_TIMEOUTS, &[], 1.0).await;
    assert_eq!(up.arrivals(), 0);
    // A client that sends its headers at once is not affected.
    let mut fast = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(request(&mut fast).await, Ok(200));
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sockets process `pid` has open.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Issue 13's bound: an idle keep-alive connection costs at most 20 KB of the proxy's
/// resident memory. 1,000 connections, each after one request, measured as the growth of
/// RSS over a warmed-up process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keepalive_connection_costs_at_most_20_kb() {
    const N: usize = 1000;
    const BOUND_BYTES: f64 = 20_000.0;
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&body(&up)).await;
    // Warm up: a round of connections opened and closed, so that the allocator's and
    // tokio's first growth is not charged to the idle connections measured next.
    let mut warm = Vec::new();
    for _ in 0..N / 4 {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(request(&mut s).await, Ok(200));
        warm.push(s);
    }
    drop(warm);
    let pid = proxy.pid();
    eventually(
        "the warm-up connections to close",
        Duration::from_secs(10),
        || async {
            let open = sockets(pid);
            if open < N / 8 {
                Ok(())
            } else {
                Err(format!("{open} sockets open"))
            }
        },
    )
    .await;
    let before = rss_kib(pid);

    let mut idle = Vec::with_capacity(N);
    for _ in 0..N {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(request(&mut s).await, Ok(200));
        idle.push(s);
    }
    // Every one was answered, so the proxy holds them all.
    assert!(sockets(pid) >= N, "{} sockets open", sockets(pid));
    let after = rss_kib(pid);
    let per_connection = after.saturating_sub(before) as f64 * 1024.0 / N as f64;
    eprintln!("{per_connection:.0} bytes per idle connection (RSS {before} -> {after} KiB)");
    assert!(
        per_connection <= BOUND_BYTES,
        "{per_connection:.0} bytes per idle connection (RSS {before} -> {after} KiB over {N})"
    );
    drop(idle);
}

/// Issue 13's other bound: once idle connections close and the traffic stops, the proxy's
/// resident memory comes back within 10% of what it was before they opened, with no new
/// traffic to make the allocator give back what was freed (the memory housekeeper does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_comes_back_when_closed_connections_leave_the_proxy_quiet() {
    const N: usize = 2000;
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&body(&up)).await;
    let pid = proxy.pid();
    // Warm up as above, so that "before" holds what any proxy keeps after its first traffic.
    let mut warm = Vec::new();
    for _ in 0..N / 4 {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(request(&mut s).await, Ok(200));
        warm.push(s);
    }
    drop(warm);
    let quiet = |what: &'static str, bound: usize| {
        eventually(what, Duration::from_secs(10), move || async move {
            let open = sockets(pid);
            if open < bound {
                Ok(())
            } else {
                Err(format!("{open} sockets open"))
            }
        })
    };
    quiet("the warm-up connections to close", N / 8).await;
    let before = rss_kib(pid);

    let mut idle = Vec::with_capacity(N);
    for _ in 0..N {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(request(&mut s).await, Ok(200));
        idle.push(s);
    }
    let open = rss_kib(pid);
    assert!(
        open > before + before / 5,
        "RSS {before} -> {open} KiB: too little growth to tell anything"
    );
    drop(idle);
    quiet("the connections to close", N / 8).await;
    // No request from here on: only /proc is read.
    eventually(
        "resident memory back within 10% of before",
        Duration::from_secs(60),
        || async {
            let now = rss_kib(pid);
            if now * 10 <= before * 11 {
                Ok(())
            } else {
                Err(format!("RSS {before} -> {open} -> {now} KiB"))
            }
        },
    )
    .await;
    assert!(proxy.metric("portcullis_memory_releases_total", &[]).await >= 1.0);
}
