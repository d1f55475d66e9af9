//! A gRPC client for the simulated workers written straight on `h2`: one
//! HTTP/2 connection and nothing between it and the caller. The coordinator
//! sees exactly the requests `tonic` would send, while the harness spends
//! less of the machine's CPU on its own side (tonic's channel adds a buffer
//! task and hyper's dispatcher per call), which on a machine shared with the
//! coordinator is CPU taken from the thing being measured.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
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

    fn head(&self, method: &str) -> anyhow::Result<http::Request<()>> {
        Ok(http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/atelier.v1.{method}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?)
    }

    /// One unary call: `method` is `Service/Method` under `atelier.v1`.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &mut self,
        method: &str,
        request: &Req,
    ) -> anyhow::Result<Resp> {
        let head = self.head(method)?;
        let mut send = self.send.clone().ready().await?;
        let (response, mut stream) = send.send_request(head, false)?;
        stream.send_data(frame(request)?, true)?;
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

    /// Opens a bidirectional stream (`Service/Method`), once its answer's
    /// headers are in.
    pub async fn open_stream(&mut self, method: &str) -> anyhow::Result<LeanStream> {
        let head = self.head(method)?;
        let mut send = self.send.clone().ready().await?;
        let (response, requests) = send.send_request(head, false)?;
        let response = response.await?;
        check_status(method, response.headers())?;
        Ok(LeanStream {
            requests,
            answers: response.into_body(),
            buffer: BytesMut::new(),
        })
    }
}

/// A bidirectional gRPC stream on which each request gets one answer, in order.
pub struct LeanStream {
    requests: SendStream<Bytes>,
    answers: RecvStream,
    buffer: BytesMut,
}

impl LeanStream {
    pub async fn call<Req: Message, Resp: Message + Default>(
        &mut self,
        request: &Req,
    ) -> anyhow::Result<Resp> {
        self.requests.send_data(frame(request)?, false)?;
        loop {
            if self.buffer.len() >= 5 {
                let length = u32::from_be_bytes(self.buffer[1..5].try_into()?) as usize;
                if self.buffer.len() >= 5 + length {
                    let mut message = self.buffer.split_to(5 + length);
                    message.advance(5);
                    return Ok(Resp::decode(message)?);
                }
            }
            let chunk = self
                .answers
                .data()
                .await
                .ok_or_else(|| anyhow::anyhow!("the stream ended"))??;
            let _ = self.answers.flow_control().release_capacity(chunk.len());
            self.buffer.extend_from_slice(&chunk);
        }
    }
}

/// A message as gRPC sends it: uncompressed, its length first.
fn frame(message: &impl Message) -> anyhow::Result<Bytes> {
    let mut body = BytesMut::with_capacity(5 + message.encoded_len());
    body.put_u8(0);
    body.put_u32(message.encoded_len() as u32);
    message.encode(&mut body)?;
    Ok(body.freeze())
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
