//! Raw HTTP/1.1 over a TcpStream, for requests a real client refuses to send (malformed
//! request lines, dot segments, hop-by-hop headers) and for reading responses exactly.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response as it came off the wire.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Every value of `name`, joined with `, `.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Send `request` bytes as they are on a new connection and read one response.
pub async fn send(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream).await
}

/// Read one response from `stream` (content-length or close-delimited bodies); panics when
/// there is none within 10s.
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    tokio::time::timeout(Duration::from_secs(10), try_read_response(stream))
        .await
        .expect("no response within 10s")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Read one response from `stream`; an error when the connection breaks or the response
/// does not parse.
pub async fn try_read_response(stream: &mut TcpStream) -> Result<RawResponse, String> {
    let mut buf = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let parsed = resp.parse(&buf).map_err(|e| format!("bad response: {e}"))?;
        if let httparse::Status::Complete(n) = parsed {
            let status = resp.code.unwrap_or(0);
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let len = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map(|(_, v)| v.parse::<usize>().map_err(|e| e.to_string()))
                .transpose()?;
            let mut body = buf[n..].to_vec();
            match len {
                Some(len) => {
                    while body.len() < len {
                        let mut chunk = [0u8; 8192];
                        let got = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
                        if got == 0 {
                            return Err("connection closed inside the body".into());
                        }
                        body.extend_from_slice(&chunk[..got]);
                    }
                    body.truncate(len);
                }
                None => {
                    stream
                        .read_to_end(&mut body)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            return Ok(RawResponse {
                status,
                headers,
                body,
            });
        }
        let mut chunk = [0u8; 8192];
        let got = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if got == 0 {
            return Err(format!(
                "connection closed before a response: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..got]);
    }
}
