//! A TCP server for the test doubles that can be stopped and started again on its port.
//!
//! The JWKS server and the test upstream differ only in how they answer a connection; this
//! owns the rest: the listener, the accept loop, cutting open connections on stop, and
//! binding the same port again on restart.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

type Handler = Arc<dyn Fn(TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A running (or stopped) server on a fixed port of 127.0.0.1. Dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    what: &'static str,
    handler: Handler,
    running: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl Server {
    /// Answer each connection to `listener` with `handler`; `what` names the server in a
    /// failure message.
    pub fn start<F, Fut>(listener: TcpListener, what: &'static str, handler: F) -> Server
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |stream| Box::pin(handler(stream)));
        Server {
            addr: listener.local_addr().unwrap(),
            what,
            running: Some(serve(listener, Arc::clone(&handler))),
            handler,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop listening and cut every open connection; the port refuses connections when this
    /// returns.
    pub async fn stop(&mut self) {
        if let Some((tx, accept)) = self.running.take() {
            let _ = tx.send(true);
            accept.abort();
            let _ = accept.await;
        }
    }

    /// Listen again on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        // Another socket may hold the port for a moment (an outgoing connection's ephemeral
        // port); try for a while.
        let addr = self.addr;
        let listener = super::eventually(
            &format!("the {}'s port to be free again", self.what),
            Duration::from_secs(5),
            || async move { TcpListener::bind(addr).await.map_err(|e| e.to_string()) },
        )
        .await;
        self.running = Some(serve(listener, Arc::clone(&self.handler)));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some((tx, accept)) = self.running.take() {
            let _ = tx.send(true);
            accept.abort();
        }
    }
}

fn serve(listener: TcpListener, handler: Handler) -> (watch::Sender<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let accept = tokio::spawn(async move {
        let mut stop = rx.clone();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                conn = listener.accept() => {
                    let Ok((stream, _)) = conn else { continue };
                    let answer = handler(stream);
                    let mut stop = rx.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = stop.changed() => {}
                            _ = answer => {}
                        }
                    });
                }
            }
        }
    });
    (tx, accept)
}
