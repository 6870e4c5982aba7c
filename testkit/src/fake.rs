//! Fake upstreams: small real TCP servers that stand in for service-a and
//! misbehave on purpose, speaking raw bytes so they can break HTTP too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// What the fake does with each request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Reads the request and never answers (the connection stays open).
    Hang,
    /// Sends these bytes, then closes.
    Raw(Bytes),
    /// Sends `head`, then `chunk` every `every`, forever.
    Trickle {
        /// Status line and headers, ending in a blank line.
        head: Bytes,
        /// Sent again and again.
        chunk: Bytes,
        /// Pause between chunks.
        every: Duration,
    },
    /// Sends `head`, then `chunk` as fast as the client reads, until `total`
    /// bytes of body were sent (or forever if `None`).
    Flood {
        /// Status line and headers, ending in a blank line.
        head: Bytes,
        /// Sent again and again.
        chunk: Bytes,
        /// Body bytes to send in all.
        total: Option<usize>,
    },
    /// Reads the request, then resets the connection.
    Reset,
    /// The n-th connection gets the n-th behaviour; the last one repeats.
    Sequence(Vec<Behaviour>),
    /// Waits, then behaves as told.
    Delayed(Duration, Box<Behaviour>),
    /// Keeps the connection alive: answers each request on it with the next
    /// of these responses; once they are used up, reads one more request and
    /// closes without answering (a server that restarted, or crashed on it).
    KeepAlive(Vec<Bytes>),
    /// Like [`Behaviour::KeepAlive`], with each response sent in parts,
    /// 5 ms apart: how the end of a body may come a moment after the rest.
    KeepAliveInParts(Vec<Vec<Bytes>>),
}

impl Behaviour {
    /// A complete response with a JSON content type.
    pub fn json(status: u16, body: &str) -> Self {
        Self::response(status, "application/json", body)
    }

    /// A complete response with any content type, `Connection: close`.
    pub fn response(status: u16, content_type: &str, body: &str) -> Self {
        Self::Raw(Bytes::from(format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )))
    }

    /// A complete response with a JSON content type that keeps the
    /// connection open, for [`Behaviour::KeepAlive`].
    pub fn kept_alive(status: u16, body: &str) -> Bytes {
        Bytes::from(format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    /// A service-a that restarts under a kept-alive connection: the first
    /// connection answers `{"echo":"x"}` once, then closes under the next
    /// request without answering; every later connection answers.
    pub fn restarting() -> Self {
        let good = Self::kept_alive(200, r#"{"echo":"x"}"#);
        Self::Sequence(vec![
            Self::KeepAlive(vec![good.clone()]),
            Self::KeepAlive(vec![good; 100]),
        ])
    }

    /// Headers of a `200` JSON response with a chunked body, for `Trickle`/`Flood`.
    pub fn chunked_json_head() -> Bytes {
        Bytes::from_static(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        )
    }

    /// One HTTP/1.1 chunk carrying `data`.
    pub fn chunk(data: &[u8]) -> Bytes {
        let mut out = format!("{:x}\r\n", data.len()).into_bytes();
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
        Bytes::from(out)
    }
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request line and headers, as sent.
    pub head: String,
}

impl Recorded {
    /// The request target (`/echo?msg=...`).
    pub fn target(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }

    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A running fake; stops (and drops its connections) when dropped.
#[derive(Debug)]
pub struct FakeUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FakeUpstream {
    /// Starts a fake on `127.0.0.1:0`.
    pub async fn start(behaviour: Behaviour) -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), behaviour)
    }

    /// Starts a fake on a listener the test already bound.
    pub fn start_on(listener: TcpListener, behaviour: Behaviour) -> Self {
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                let this = match &behaviour {
                    Behaviour::Sequence(list) => list[n.min(list.len() - 1)].clone(),
                    other => other.clone(),
                };
                n += 1;
                accepted.fetch_add(1, Ordering::SeqCst);
                connections.spawn(serve(stream, this, log.clone()));
            }
        });
        Self {
            addr,
            requests,
            connections,
            task,
        }
    }

    /// `http://ADDR`, for `--service-a-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, behaviour: Behaviour, log: Arc<Mutex<Vec<Recorded>>>) {
    let record = |head| log.lock().unwrap().push(Recorded { head });
    if let Behaviour::KeepAliveInParts(responses) = behaviour {
        for parts in responses {
            let Some(head) = read_head(&mut stream).await else {
                return;
            };
            record(head);
            for part in parts {
                if stream.write_all(&part).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        return;
    }
    if let Behaviour::KeepAlive(responses) = behaviour {
        for response in responses {
            let Some(head) = read_head(&mut stream).await else {
                return;
            };
            record(head);
            // The head first, the body a moment later, as a real server's
            // answer may arrive: a client that stops reading at the head
            // cannot reuse the connection.
            let split = response
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(response.len(), |i| i + 4);
            if stream.write_all(&response[..split]).await.is_err() {
                return;
            }
            if split < response.len() {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if stream.write_all(&response[split..]).await.is_err() {
                    return;
                }
            }
        }
        if let Some(head) = read_head(&mut stream).await {
            record(head);
        }
        return;
    }
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    record(head);
    let _ = act(&mut stream, behaviour).await;
}

async fn act(stream: &mut TcpStream, behaviour: Behaviour) -> std::io::Result<()> {
    match behaviour {
        Behaviour::Hang => {
            // Keep the connection until the client gives up.
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
        }
        Behaviour::Raw(bytes) => {
            stream.write_all(&bytes).await?;
            stream.shutdown().await?;
        }
        Behaviour::Trickle { head, chunk, every } => {
            stream.write_all(&head).await?;
            loop {
                stream.write_all(&chunk).await?;
                tokio::time::sleep(every).await;
            }
        }
        Behaviour::Flood { head, chunk, total } => {
            stream.write_all(&head).await?;
            let mut sent = 0;
            while total.is_none_or(|t| sent < t) {
                stream.write_all(&chunk).await?;
                sent += chunk.len();
            }
        }
        Behaviour::Reset => stream.set_zero_linger()?,
        Behaviour::Sequence(_) => unreachable!("resolved per connection"),
        Behaviour::KeepAlive(_) | Behaviour::KeepAliveInParts(_) => {
            unreachable!("served in `serve`")
        }
        Behaviour::Delayed(delay, then) => {
            tokio::time::sleep(delay).await;
            Box::pin(act(stream, *then)).await?;
        }
    }
    Ok(())
}

/// Reads up to the blank line that ends a request head (at most 1 MiB).
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}
