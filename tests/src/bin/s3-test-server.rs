//! An S3-compatible server over a local directory (s3s-fs), for the tests:
//! buckets are folders under the root, objects files. Its data outlives the
//! process, so a test can kill it mid-job and start it again on the same port.
//!
//!   s3-test-server ROOT ADDRESS ACCESS_KEY SECRET_KEY

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{Body, HttpError, HttpResponse};

/// s3s-fs answers a HEAD of a key that is a folder on its disk (a prefix,
/// to S3) with a 500; S3 has no folders and answers 404, which is what
/// dataset readers (pyarrow, pandas) expect before they list the prefix.
#[derive(Clone)]
struct NoFolderObjects {
    root: PathBuf,
    s3: S3Service,
}

type Answer = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send>>;

impl hyper::service::Service<http::Request<Incoming>> for NoFolderObjects {
    type Response = HttpResponse;
    type Error = HttpError;
    type Future = Answer;

    fn call(&self, request: http::Request<Incoming>) -> Answer {
        let key = request.uri().path().trim_start_matches('/');
        let folder = !key.is_empty() && !key.ends_with('/') && self.root.join(key).is_dir();
        if request.method() == http::Method::HEAD && folder && key.contains('/') {
            let mut response = HttpResponse::new(Body::empty());
            *response.status_mut() = http::StatusCode::NOT_FOUND;
            return Box::pin(async move { Ok(response) });
        }
        hyper::service::Service::call(&self.s3, request)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, root, address, access_key, secret_key] = args.as_slice() else {
        anyhow::bail!("usage: s3-test-server ROOT ADDRESS ACCESS_KEY SECRET_KEY");
    };
    std::fs::create_dir_all(root)?;
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(
        access_key.as_str(),
        secret_key.as_str(),
    ));
    let service = NoFolderObjects {
        root: root.into(),
        s3: builder.build(),
    };
    let listener = tokio::net::TcpListener::bind(address.as_str()).await?;
    // The tests wait for this line.
    println!("s3 listening on {}", listener.local_addr()?);
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let (socket, _) = listener.accept().await?;
        let connection = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
