//! The listener (async, inside the daemon's runtime) and the scraper
//! (blocking std I/O, for a command line tool or a test).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::Semaphore,
    task::JoinHandle,
};

/// A request head larger than this is refused.
const MAX_REQUEST: usize = 8 * 1024;
/// A client has this long to send its request and take the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CLIENTS: usize = 8;
/// A page larger than this is refused by [`scrape`].
const MAX_PAGE: u64 = 16 * 1024 * 1024;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr` and serves `render()` there (see [`serve`]). The bound
/// address is logged as `metrics listening on ADDR` (port 0 picks one, and
/// tests read it back from that line). A failure to bind is logged and
/// `None` returned: the caller runs on without metrics, since enforcement
/// and telemetry matter more than the figures.
pub async fn listen<F>(addr: SocketAddr, render: F) -> Option<JoinHandle<()>>
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(%addr, error = %e, "metrics: cannot listen; running without them");
            return None;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!("metrics listening on {bound}");
    Some(serve(listener, render))
}

/// Serves `render()` at `GET /metrics` (and `/`) on `listener` until the
/// task is aborted. `render` runs on the runtime: keep it cheap.
pub fn serve<F>(listener: TcpListener, render: F) -> JoinHandle<()>
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    let permits = Arc::new(Semaphore::new(MAX_CLIENTS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let render = render.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let answered = tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, &*render));
                if let Ok(Err(e)) = answered.await {
                    tracing::debug!(error = %e, "metrics client");
                }
            });
        }
    })
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    render: &(dyn Fn() -> String + Send + Sync),
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST {
            return reply(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let path = path.map(|p| p.split(|&b| b == b'?').next().unwrap_or_default());
    match (method, path) {
        (Some(b"GET"), Some(b"/metrics" | b"/")) => reply(&mut stream, "200 OK", &render()).await,
        (Some(b"GET"), _) => reply(&mut stream, "404 Not Found", "GET /metrics\n").await,
        _ => reply(&mut stream, "405 Method Not Allowed", "GET /metrics\n").await,
    }
}

async fn reply(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Why [`scrape`] got no page.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("nothing answers on {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("reading from {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} answered {status:?}, not a metrics page")]
    Status { addr: SocketAddr, status: String },
    #[error("{addr} answered something that is not HTTP or not UTF-8")]
    Garbled { addr: SocketAddr },
}

/// `GET /metrics` from `addr`, blocking, within `timeout` per step.
pub fn scrape(addr: SocketAddr, timeout: Duration) -> Result<String, ScrapeError> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| ScrapeError::Connect { addr, source })?;
    let io = |source| ScrapeError::Io { addr, source };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(io)?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_PAGE)
        .read_to_end(&mut raw)
        .map_err(io)?;
    let raw = String::from_utf8(raw).map_err(|_| ScrapeError::Garbled { addr })?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or(ScrapeError::Garbled { addr })?;
    let status = head.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        return Err(ScrapeError::Status {
            addr,
            status: status.to_owned(),
        });
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_the_page_and_refuses_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = n.clone();
        let task = serve(listener, move || {
            let v = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("scrapes {v}\n")
        });
        let result = tokio::task::spawn_blocking(move || {
            let first = scrape(addr, Duration::from_secs(5)).unwrap();
            let second = scrape(addr, Duration::from_secs(5)).unwrap();
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"POST /metrics HTTP/1.1\r\n\r\n").unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /other HTTP/1.1\r\n\r\n").unwrap();
            let mut other = String::new();
            s.read_to_string(&mut other).unwrap();
            (first, second, answer, other)
        })
        .await
        .unwrap();
        task.abort();
        assert_eq!(result.0, "scrapes 0\n");
        assert_eq!(result.1, "scrapes 1\n");
        assert!(result.2.starts_with("HTTP/1.1 405"), "{}", result.2);
        assert!(result.3.starts_with("HTTP/1.1 404"), "{}", result.3);
    }

    #[test]
    fn nothing_listening_is_a_connect_error() {
        // Bound but not listening: connecting is refused, and the port
        // stays ours while the test runs.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let e = scrape(addr, Duration::from_secs(2)).unwrap_err();
        assert!(matches!(e, ScrapeError::Connect { .. }), "{e}");
    }
}
