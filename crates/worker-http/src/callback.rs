//! The optional ready callback: once serving, POST a JSON message to `--callback-url` so an
//! orchestrator learns the worker's address (plain `http://` only; the pool manager is local).

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::net::TcpStream;

/// Splits `http://host:port/path` into ("host:port", "host", "/path").
fn split_url(url: &str) -> anyhow::Result<(String, String, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("the callback URL must start with http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("the callback URL has no host");
    }
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, authority.to_owned(), path.to_owned()))
}

pub async fn post_ready(url: &str, message: &serde_json::Value) -> anyhow::Result<()> {
    let (addr, host, path) = split_url(url)?;
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr))
        .await
        .context("connecting to the callback URL timed out")?
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::task::spawn_local(conn);
    let body = Full::new(Bytes::from(serde_json::to_vec(message)?));
    let req = Request::post(path)
        .header("host", host)
        .header("content-type", "application/json")
        .body(body)?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .context("callback timed out")??;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    if !status.is_success() {
        bail!("the callback answered {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_url;

    #[test]
    fn urls() {
        let (a, h, p) = split_url("http://127.0.0.1:9000/ready").unwrap();
        assert_eq!(
            (a.as_str(), h.as_str(), p.as_str()),
            ("127.0.0.1:9000", "127.0.0.1:9000", "/ready")
        );
        let (a, _, p) = split_url("http://pool").unwrap();
        assert_eq!((a.as_str(), p.as_str()), ("pool:80", "/"));
        assert!(split_url("https://x").is_err());
    }
}
