//! Where a server listens.

/// Binds `address` and prints where it listens (port 0 picks a free port;
/// scripts and the test harness read the line).
pub async fn bind_announced(address: &str, what: &str) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    println!("{what} listening on {}", listener.local_addr()?);
    Ok(listener)
}
