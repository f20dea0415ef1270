//! TEST ONLY. What the loopback proxies in front of moto share: read one HTTP/1.1 request, send
//! it to moto on a connection of its own, and answer the client with moto's response, every
//! connection closed after one exchange. Used by `replica.rs` here and by ryw-probe's tests.

#![allow(dead_code)]

use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends the request (`head` and `body`) to `moto` (`host:port`) and returns its whole response.
pub(crate) async fn forward(moto: &str, head: &str, body: &[u8]) -> io::Result<Vec<u8>> {
    let mut server = TcpStream::connect(moto).await?;
    server
        .write_all(&with_close(head, Some(body.len())))
        .await?;
    server.write_all(body).await?;
    let mut response = Vec::new();
    server.read_to_end(&mut response).await?;
    Ok(response)
}

/// Answers the client with `response` (as [`forward`] returned it), then closes.
pub(crate) async fn answer(client: &mut TcpStream, response: &[u8]) -> io::Result<()> {
    let split = find(response, b"\r\n\r\n").ok_or(io::ErrorKind::InvalidData)?;
    let response_head = String::from_utf8_lossy(&response[..split]).into_owned();
    client.write_all(&with_close(&response_head, None)).await?;
    client.write_all(&response[split + 4..]).await?;
    client.shutdown().await
}

/// The request's head (without the blank line) and its body.
pub(crate) async fn read_request(client: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let split = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at;
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let length: usize = header(&head, "content-length")
        .map(|v| v.parse().map_err(|_| io::ErrorKind::InvalidData))
        .transpose()?
        .unwrap_or(0);
    let mut body = buf[split + 4..].to_vec();
    while body.len() < length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((head, body))
}

/// The value of header `name` (case-insensitive).
pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `head` with `connection: close` (and `content-length`, when given) instead of its own, and the
/// blank line that ends it.
pub(crate) fn with_close(head: &str, length: Option<usize>) -> Vec<u8> {
    let mut out = String::new();
    for (i, line) in head.split("\r\n").enumerate() {
        let name = line.split_once(':').map(|(n, _)| n.trim());
        let replaced = name.is_some_and(|n| {
            n.eq_ignore_ascii_case("connection")
                || n.eq_ignore_ascii_case("keep-alive")
                || (length.is_some() && n.eq_ignore_ascii_case("content-length"))
        });
        if i == 0 || !replaced {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    if let Some(length) = length {
        out.push_str(&format!("content-length: {length}\r\n"));
    }
    out.push_str("connection: close\r\n\r\n");
    out.into_bytes()
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
