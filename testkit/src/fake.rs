//! Fake upstreams: small real TCP servers that stand in for service-a and
//! misbehave on purpose, speaking raw bytes so they can break HTTP too.

use std::net::SocketAddr;
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
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                let this = match &behaviour {
                    Behaviour::Sequence(list) => list[n.min(list.len() - 1)].clone(),
                    other => other.clone(),
                };
                n += 1;
                connections.spawn(serve(stream, this, log.clone()));
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    /// `http://ADDR`, for `--service-a-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    log.lock().unwrap().push(Recorded { head });
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
