//! The "floor" server for bench/servers.py.
//!
//! Single-threaded, edge-triggered epoll (mio), no allocation per message.
//! Same wire behaviour as the Python servers in bench/servers.py:
//!   echo-tcp ADDR / echo-unix PATH : echo back exactly the bytes received;
//!   udp ADDR                       : send every datagram back to its sender;
//!   http ADDR                      : HTTP/1.1 keep-alive, one fixed small response
//!                                    per request (requests end at CRLFCRLF, no bodies).
//! ADDR is host:port (port 0 picks a free port).  Prints "READY <addr>" on
//! stdout once it listens, then serves until it is killed.

use mio::net::{TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

const LISTENER: Token = Token(usize::MAX);
const BUF: usize = 256 * 1024;
// Must match HTTP_RESPONSE in bench/servers.py.
const HTTP_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, World!";

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

struct Conn {
    s: Stream,
    out: Vec<u8>, // bytes still to write
    out_off: usize,
    inbuf: Vec<u8>, // http only: unparsed request bytes
}

#[derive(PartialEq, Clone, Copy)]
enum Mode {
    Echo,
    Http,
}

/// Write out pending output. Ok(true): all written; Ok(false): would block.
fn flush(c: &mut Conn) -> io::Result<bool> {
    while c.out_off < c.out.len() {
        match c.s.write(&c.out[c.out_off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => c.out_off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    c.out.clear();
    c.out_off = 0;
    Ok(true)
}

/// Handle one readiness edge: drain the socket until it would block (or the
/// peer stops reading).  Ok(false) means: close the connection.
fn pump(c: &mut Conn, mode: Mode, buf: &mut [u8]) -> io::Result<bool> {
    loop {
        if !flush(c)? {
            return Ok(true); // wait for a writable edge before reading more
        }
        let n = match c.s.read(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        match mode {
            Mode::Echo => {
                // Try to send straight from the read buffer; keep only the rest.
                let mut off = 0;
                while off < n {
                    match c.s.write(&buf[off..n]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(w) => off += w,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                if off < n {
                    c.out.extend_from_slice(&buf[off..n]);
                }
            }
            Mode::Http => {
                c.inbuf.extend_from_slice(&buf[..n]);
                let mut start = 0;
                while let Some(p) = find(&c.inbuf[start..], b"\r\n\r\n") {
                    start += p + 4;
                    c.out.extend_from_slice(HTTP_RESPONSE);
                }
                c.inbuf.drain(..start);
                if c.inbuf.len() > 1 << 20 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "request too large"));
                }
            }
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn serve_udp(addr: &str) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut sock = UdpSocket::bind(addr.parse::<SocketAddr>().map_err(bad)?)?;
    poll.registry().register(&mut sock, LISTENER, Interest::READABLE)?;
    println!("READY {}", sock.local_addr()?);
    io::stdout().flush()?;
    let mut buf = vec![0u8; 65536];
    let mut events = Events::with_capacity(64);
    loop {
        poll_wait(&mut poll, &mut events)?;
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, peer)) => {
                    // A full send buffer drops the reply, like a Python transport would not;
                    // on loopback with <= 10 outstanding datagrams it does not happen.
                    let _ = sock.send_to(&buf[..n], peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn poll_wait(poll: &mut Poll, events: &mut Events) -> io::Result<()> {
    loop {
        match poll.poll(events, None) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn bad<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: floor-server echo-tcp|echo-unix|udp|http ADDR");
        std::process::exit(2);
    }
    let (kind, addr) = (args[1].as_str(), args[2].as_str());
    let (mode, mut listener) = match kind {
        "udp" => return serve_udp(addr),
        "echo-tcp" | "http" => {
            let l = TcpListener::bind(addr.parse::<SocketAddr>().map_err(bad)?)?;
            println!("READY {}", l.local_addr()?);
            (if kind == "http" { Mode::Http } else { Mode::Echo }, Listener::Tcp(l))
        }
        "echo-unix" => {
            let l = UnixListener::bind(addr)?;
            println!("READY {}", addr);
            (Mode::Echo, Listener::Unix(l))
        }
        _ => {
            eprintln!("unknown mode {kind}");
            std::process::exit(2);
        }
    };
    io::stdout().flush()?;
    let mut poll = Poll::new()?;
    match &mut listener {
        Listener::Tcp(l) => poll.registry().register(l, LISTENER, Interest::READABLE)?,
        Listener::Unix(l) => poll.registry().register(l, LISTENER, Interest::READABLE)?,
    }
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 0usize;
    let mut buf = vec![0u8; BUF];
    let mut events = Events::with_capacity(256);
    loop {
        poll_wait(&mut poll, &mut events)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    let s = match &mut listener {
                        Listener::Tcp(l) => match l.accept() {
                            Ok((s, _)) => {
                                s.set_nodelay(true)?;
                                Stream::Tcp(s)
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        },
                        Listener::Unix(l) => match l.accept() {
                            Ok((s, _)) => Stream::Unix(s),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        },
                    };
                    let mut c = Conn { s, out: Vec::new(), out_off: 0, inbuf: Vec::new() };
                    let t = next;
                    next += 1;
                    poll.registry().register(
                        c.s.source(),
                        Token(t),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    conns.insert(t, c);
                }
                continue;
            }
            let t = ev.token().0;
            let close = match conns.get_mut(&t) {
                Some(c) => !matches!(pump(c, mode, &mut buf), Ok(true)),
                None => false,
            };
            if close {
                if let Some(mut c) = conns.remove(&t) {
                    let _ = poll.registry().deregister(c.s.source());
                }
            }
        }
    }
}
