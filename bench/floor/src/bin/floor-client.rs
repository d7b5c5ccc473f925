//! The fixed echo load generator for bench/servers.py (the same binary and
//! the same work for every server under test).
//!
//!   floor-client --mode tcp|unix|udp --addr ADDR --size BYTES --conns N
//!                --warmup SECS --duration SECS [--pid SERVER_PID]
//!                [--max-msgs M] [--drain-timeout SECS]
//!
//! Each of the N connections (UDP: N sockets) runs a closed loop: send one
//! message of SIZE bytes, wait until exactly those SIZE bytes have come back
//! (checked byte for byte), record the round-trip time, send the next one.
//! After --warmup seconds the measured window starts; it lasts --duration
//! seconds (or until --max-msgs messages).  At both window edges the client
//! reads the server's CPU time from /proc/PID/stat (utime+stime, ticks) and
//! /proc/PID/task/*/schedstat (on-CPU ns), so the CPU figures cover exactly
//! the window.  Then it stops sending, waits for the replies in flight
//! (bounded by --drain-timeout), closes and prints one JSON line.
//! UDP: a reply missing for 0.5 s counts as lost and the socket sends anew.

use mio::net::{TcpStream, UdpSocket, UnixStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
    Udp(UdpSocket),
}

struct Conn {
    s: Sock,
    sent: usize,
    recvd: usize,
    t0: Instant,
    busy: bool, // a message is in flight
    seq: u64,
}

struct Args {
    mode: String,
    addr: String,
    size: usize,
    conns: usize,
    warmup: f64,
    duration: f64,
    pid: Option<u32>,
    max_msgs: u64,
    drain_timeout: f64,
}

fn parse_args() -> Args {
    let mut a = Args {
        mode: String::new(),
        addr: String::new(),
        size: 1024,
        conns: 1,
        warmup: 0.2,
        duration: 1.0,
        pid: None,
        max_msgs: u64::MAX,
        drain_timeout: 5.0,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_else(|| die(&format!("{} needs a value", v[i])));
        match v[i].as_str() {
            "--mode" => a.mode = val,
            "--addr" => a.addr = val,
            "--size" => a.size = val.parse().unwrap_or_else(|_| die("bad --size")),
            "--conns" => a.conns = val.parse().unwrap_or_else(|_| die("bad --conns")),
            "--warmup" => a.warmup = val.parse().unwrap_or_else(|_| die("bad --warmup")),
            "--duration" => a.duration = val.parse().unwrap_or_else(|_| die("bad --duration")),
            "--pid" => a.pid = Some(val.parse().unwrap_or_else(|_| die("bad --pid"))),
            "--max-msgs" => a.max_msgs = val.parse().unwrap_or_else(|_| die("bad --max-msgs")),
            "--drain-timeout" => a.drain_timeout = val.parse().unwrap_or_else(|_| die("bad --drain-timeout")),
            o => die(&format!("unknown option {o}")),
        }
        i += 2;
    }
    if !matches!(a.mode.as_str(), "tcp" | "unix" | "udp") || a.addr.is_empty() {
        die("need --mode tcp|unix|udp and --addr");
    }
    if a.size == 0 || a.conns == 0 || a.duration <= 0.0 {
        die("--size, --conns and --duration must be positive");
    }
    if a.mode == "udp" && (a.size < 8 || a.size > 65507) {
        die("UDP --size must be 8..65507");
    }
    a
}

fn die(msg: &str) -> ! {
    eprintln!("floor-client: {msg}");
    std::process::exit(2);
}

/// (utime+stime ticks, on-CPU ns summed over live threads) of a process.
fn server_cpu(pid: Option<u32>) -> (u64, u64, u64) {
    let Some(pid) = pid else { return (0, 0, 0) };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let (mut ut, mut st) = (0, 0);
    if let Some(p) = stat.rfind(')') {
        let f: Vec<&str> = stat[p + 1..].split_whitespace().collect();
        // fields 14 and 15 of proc(5); f[0] is field 3.
        ut = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0);
        st = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
    }
    let mut ns = 0u64;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) {
                ns += s.split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(0);
            }
        }
    }
    (ut, st, ns)
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let a = parse_args();
    let size = a.size;
    let mut msg = vec![0u8; size];
    for (i, b) in msg.iter_mut().enumerate() {
        *b = (i * 131 + 7) as u8;
    }
    let mut rbuf = vec![0u8; 256 * 1024];
    let mut poll = Poll::new().unwrap_or_else(|e| die(&format!("poll: {e}")));
    let mut conns: Vec<Conn> = Vec::new();
    for i in 0..a.conns {
        let s = match a.mode.as_str() {
            "tcp" => {
                let addr: SocketAddr = a.addr.parse().unwrap_or_else(|_| die("bad tcp --addr"));
                let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .unwrap_or_else(|e| die(&format!("connect {addr}: {e}")));
                s.set_nodelay(true).ok();
                s.set_nonblocking(true).unwrap();
                Sock::Tcp(TcpStream::from_std(s))
            }
            "unix" => {
                let s = std::os::unix::net::UnixStream::connect(&a.addr)
                    .unwrap_or_else(|e| die(&format!("connect {}: {e}", a.addr)));
                s.set_nonblocking(true).unwrap();
                Sock::Unix(UnixStream::from_std(s))
            }
            _ => {
                let addr: SocketAddr = a.addr.parse().unwrap_or_else(|_| die("bad udp --addr"));
                let s = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
                s.connect(addr).unwrap_or_else(|e| die(&format!("udp connect: {e}")));
                Sock::Udp(s)
            }
        };
        let mut c = Conn { s, sent: 0, recvd: 0, t0: Instant::now(), busy: false, seq: 0 };
        let r = poll.registry();
        let interest = Interest::READABLE | Interest::WRITABLE;
        match &mut c.s {
            Sock::Tcp(s) => r.register(s, Token(i), interest),
            Sock::Unix(s) => r.register(s, Token(i), interest),
            Sock::Udp(s) => r.register(s, Token(i), Interest::READABLE),
        }
        .unwrap();
        conns.push(c);
    }

    let start = Instant::now();
    let w0 = start + Duration::from_secs_f64(a.warmup);
    let mut w1 = w0 + Duration::from_secs_f64(a.duration);
    let mut phase = 0; // 0 warmup, 1 measuring, 2 draining
    let mut lat: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut warm_msgs = 0u64;
    let mut lost = 0u64;
    let mut cpu0 = (0, 0, 0);
    let mut cpu1 = (0, 0, 0);
    let mut t_w0 = start;
    let mut t_w1 = start;
    let mut drain_deadline = start;
    let mut events = Events::with_capacity(64);
    let udp = a.mode == "udp";
    let udp_timeout = Duration::from_millis(500);
    let mut err: Option<String> = None;

    // Kick off the first message on every connection.
    for i in 0..conns.len() {
        start_msg(&mut conns[i], &msg, udp);
        if let Err(e) = drive(&mut conns[i], &mut msg, &mut rbuf, udp, false) {
            die(&format!("conn {i}: {e}"));
        }
    }
    // For readiness handling each connection is driven from its events.
    loop {
        let now = Instant::now();
        if phase == 0 && now >= w0 {
            cpu0 = server_cpu(a.pid);
            t_w0 = Instant::now();
            w1 = t_w0 + Duration::from_secs_f64(a.duration);
            phase = 1;
        }
        if phase == 1 && (now >= w1 || lat.len() as u64 >= a.max_msgs) {
            cpu1 = server_cpu(a.pid);
            t_w1 = Instant::now();
            phase = 2;
            drain_deadline = t_w1 + Duration::from_secs_f64(a.drain_timeout);
        }
        if phase == 2 && (conns.iter().all(|c| !c.busy) || now >= drain_deadline) {
            if conns.iter().any(|c| c.busy) {
                err = Some("replies still missing at the drain timeout".into());
            }
            break;
        }
        let mut timeout = match phase {
            0 => w0.saturating_duration_since(now),
            1 => w1.saturating_duration_since(now),
            _ => drain_deadline.saturating_duration_since(now),
        };
        if udp {
            timeout = timeout.min(Duration::from_millis(50));
        }
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            die(&format!("poll: {e}"));
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let mut try_read = true;
            loop {
                match drive(&mut conns[i], &mut msg, &mut rbuf, udp, try_read) {
                    Ok(Some(ns)) => {
                        match phase {
                            0 => warm_msgs += 1,
                            1 => lat.push(ns),
                            _ => {}
                        }
                        if phase < 2 {
                            start_msg(&mut conns[i], &msg, udp);
                            try_read = false;
                        } else {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => die(&format!("conn {i}: {e}")),
                }
            }
        }
        if udp {
            let now = Instant::now();
            for c in conns.iter_mut() {
                if c.busy && now.duration_since(c.t0) > udp_timeout {
                    lost += 1;
                    c.busy = false;
                    if phase < 2 {
                        start_msg(c, &msg, udp);
                        let _ = drive(c, &mut msg, &mut rbuf, udp, false);
                    }
                }
            }
        }
    }
    drop(conns);
    let secs = t_w1.duration_since(t_w0).as_secs_f64();
    let n = lat.len() as u64;
    lat.sort_unstable();
    let mean = if n > 0 { lat.iter().sum::<u64>() as f64 / n as f64 } else { 0.0 };
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    println!(
        "{{\"msgs\": {n}, \"seconds\": {secs:.6}, \"p50_us\": {:.2}, \"p99_us\": {:.2}, \"mean_us\": {:.2}, \
\"server_cpu_ns\": {}, \"server_utime_ticks\": {}, \"server_stime_ticks\": {}, \"clk_tck\": {tck}, \
\"warmup_msgs\": {warm_msgs}, \"lost\": {lost}, \"error\": {}}}",
        pct(&lat, 50.0) as f64 / 1e3,
        pct(&lat, 99.0) as f64 / 1e3,
        mean / 1e3,
        cpu1.2.saturating_sub(cpu0.2),
        cpu1.0.saturating_sub(cpu0.0),
        cpu1.1.saturating_sub(cpu0.1),
        match err {
            Some(e) => format!("\"{e}\""),
            None => "null".into(),
        }
    );
}

fn start_msg(c: &mut Conn, msg: &[u8], udp: bool) {
    c.sent = 0;
    c.recvd = 0;
    c.busy = true;
    c.t0 = Instant::now();
    if udp {
        c.seq += 1;
    }
    let _ = msg;
}

/// Make progress on one connection until it would block.  Returns
/// Some(round-trip ns) when the message in flight completed.
/// `try_read` is false right after a message was started: its reply can't be
/// there yet, and if it arrives meanwhile, epoll reports a readable edge.
fn drive(c: &mut Conn, msg: &mut [u8], rbuf: &mut [u8], udp: bool, try_read: bool) -> io::Result<Option<u64>> {
    if !c.busy {
        return Ok(None);
    }
    let size = msg.len();
    if udp {
        let Sock::Udp(s) = &mut c.s else { unreachable!() };
        if c.sent == 0 {
            msg[..8].copy_from_slice(&c.seq.to_le_bytes());
            match s.send(msg) {
                Ok(n) if n == size => c.sent = size,
                Ok(_) => return Err(io::Error::other("short datagram send")),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
            if !try_read {
                return Ok(None);
            }
        }
        loop {
            match s.recv(rbuf) {
                Ok(n) => {
                    if n == size && rbuf[..8] == c.seq.to_le_bytes() {
                        if rbuf[8..n] != msg[8..] {
                            return Err(io::Error::other("echoed datagram differs"));
                        }
                        c.busy = false;
                        return Ok(Some(c.t0.elapsed().as_nanos() as u64));
                    }
                    // a late reply to a message already counted as lost: ignore
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
    let mut try_read = try_read;
    loop {
        let mut progress = false;
        while c.sent < size {
            let r = match &mut c.s {
                Sock::Tcp(s) => s.write(&msg[c.sent..]),
                Sock::Unix(s) => s.write(&msg[c.sent..]),
                _ => unreachable!(),
            };
            match r {
                Ok(0) => return Err(io::Error::other("write returned 0")),
                Ok(n) => {
                    c.sent += n;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if !try_read {
            if c.sent == size {
                return Ok(None);
            }
            try_read = true; // a large message: read while writing
        }
        loop {
            let r = match &mut c.s {
                Sock::Tcp(s) => s.read(rbuf),
                Sock::Unix(s) => s.read(rbuf),
                _ => unreachable!(),
            };
            match r {
                Ok(0) => return Err(io::Error::other("server closed the connection")),
                Ok(n) => {
                    if c.recvd + n > size {
                        return Err(io::Error::other("server sent more bytes than were sent to it"));
                    }
                    if rbuf[..n] != msg[c.recvd..c.recvd + n] {
                        return Err(io::Error::other("echoed bytes differ"));
                    }
                    c.recvd += n;
                    progress = true;
                    if c.recvd == size {
                        c.busy = false;
                        return Ok(Some(c.t0.elapsed().as_nanos() as u64));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if !progress {
            return Ok(None);
        }
    }
}
