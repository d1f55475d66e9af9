//! A gRPC client for the simulated workers written straight on `h2`: one
//! HTTP/2 connection and nothing between it and the caller. The coordinator
//! sees exactly the requests `tonic` would send, while the harness spends
//! less of the machine's CPU on its own side (tonic's channel adds a buffer
//! task and hyper's dispatcher per call), which on a machine shared with the
//! coordinator is CPU taken from the thing being measured.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use prost::Message;
use tokio::net::TcpStream;

/// Clones share the connection, as tonic channels do.
#[derive(Clone)]
pub struct LeanClient {
    authority: String,
    send: SendRequest<Bytes>,
}

impl LeanClient {
    pub async fn connect(address: &str) -> anyhow::Result<Self> {
        let authority = address
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let tcp = TcpStream::connect(&authority).await?;
        tcp.set_nodelay(true)?;
        let (send, connection) = h2::client::handshake(tcp).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { authority, send })
    }

    /// One unary call: `method` is `Service/Method` under `atelier.v1`.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &mut self,
        method: &str,
        request: &Req,
    ) -> anyhow::Result<Resp> {
        let mut body = BytesMut::with_capacity(5 + request.encoded_len());
        body.put_u8(0);
        body.put_u32(request.encoded_len() as u32);
        request.encode(&mut body)?;
        let head = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/atelier.v1.{method}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?;
        let mut send = self.send.clone().ready().await?;
        let (response, mut stream) = send.send_request(head, false)?;
        stream.send_data(body.freeze(), true)?;
        let response = response.await?;
        check_status(method, response.headers())?;
        let mut body = response.into_body();
        let mut message = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            message.extend_from_slice(&chunk);
        }
        if let Some(trailers) = body.trailers().await? {
            check_status(method, &trailers)?;
        }
        if message.len() < 5 {
            anyhow::bail!("{method}: answer without a message");
        }
        message.advance(5);
        Ok(Resp::decode(message)?)
    }
}

fn check_status(method: &str, headers: &http::HeaderMap) -> anyhow::Result<()> {
    match headers.get("grpc-status").map(|v| v.as_bytes()) {
        None | Some(b"0") => Ok(()),
        Some(code) => anyhow::bail!(
            "{method}: grpc-status {} {:?}",
            String::from_utf8_lossy(code),
            headers.get("grpc-message")
        ),
    }
}
