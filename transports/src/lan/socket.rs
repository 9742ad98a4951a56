//! TCP sockets set up with socket2, then handed to tokio.
//!
//! tokio alone cannot set SO_REUSEADDR before bind or the keepalive probe count, and both
//! matter here: a daemon restarted on its usual port must not wait out TIME_WAIT, and a peer
//! that walked out of Wi-Fi range must be noticed in tens of seconds, not the kernel's two hours.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Idle time before the first keepalive probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Time between unanswered probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the kernel declares the link dead (~25 s after it went quiet).
const KEEPALIVE_PROBES: u32 = 3;
/// Pending inbound connections the kernel may queue before we accept them.
const LISTEN_BACKLOG: i32 = 128;

/// Binds the listening socket with SO_REUSEADDR and hands it to tokio.
pub(crate) fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Connects to `addr` within `timeout`, with the link options applied.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    let stream = match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(result) => result?,
        Err(_elapsed) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ))
        }
    };
    configure_link(&stream)?;
    Ok(stream)
}

/// Options every link gets, inbound or outbound: no Nagle delay (frames are small and
/// latency-bound) and keepalive probes so dead peers free their slot.
pub(crate) fn configure_link(stream: &TcpStream) -> io::Result<()> {
    let socket = SockRef::from(stream);
    socket.set_tcp_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket.set_tcp_keepalive(&keepalive)?;
    Ok(())
}
