//! Socket helpers of the live tests: one loopback connection closed the ordinary way, and
//! SO_LINGER {1, 0} (close sends a RST).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// One connection on `bind` (an address with port 0): the client writes, the server reads,
/// then active close on the client and passive on the server. Returns (listener port, client
/// port).
pub fn one_connection(bind: &str) -> (u16, u16) {
    let listener = TcpListener::bind(bind).unwrap();
    let lport = listener.local_addr().unwrap().port();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let cport = client.local_addr().unwrap().port();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // Active close on the client, passive on the server. (shutdown() before close() would add
    // a FIN_WAIT1→FIN_WAIT1 self-transition when close() runs before the ACK arrives.)
    drop(client);
    assert_eq!(server.read(&mut buf).unwrap(), 0);
    drop(server);
    drop(listener);
    (lport, cport)
}

/// SO_LINGER {on, 0 s}: closing `s` aborts the connection (RST) instead of a FIN.
pub fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a valid linger struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}
