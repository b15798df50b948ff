//! A fixed loopback load: client threads connect to a local listener and close at once, an
//! acceptor thread accepts and closes. Bounded in time and in count. Run it inside a private
//! network namespace (`unshare -n`) so that it touches nothing else.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Result of one run.
#[derive(Clone, Copy, Debug)]
pub struct LoadResult {
    pub connections: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.connections as f64 / self.elapsed.as_secs_f64()
    }
}

/// Pins the calling thread to CPU `cpu` (modulo the CPUs this process may use). Best effort:
/// returns whether it worked.
fn pin_to(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; sched_{get,set}affinity(0, …) act on the calling thread
    // with a pointer to a local set of the right size.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw mut allowed) != 0
        {
            return false;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &allowed))
            .collect();
        if cpus.is_empty() {
            return false;
        }
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpus[cpu % cpus.len()], &mut one);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const one) == 0
    }
}

/// Runs `threads` connect/close loops for `duration` or until `max_connections`. With `pin`,
/// client thread `i` runs only on CPU `i` (of those allowed) and the acceptor on the next one,
/// so that the scheduler does not move the load around between runs.
pub fn run(
    threads: usize,
    duration: Duration,
    max_connections: u64,
    pin: bool,
) -> std::io::Result<LoadResult> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr: SocketAddr = listener.local_addr()?;
    // std listens with a backlog of 128; a full accept queue drops SYNs and stalls a client
    // for a whole retransmission timeout, so raise it (capped by net.core.somaxconn).
    // SAFETY: listen(2) on a socket we own.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));

    let acceptor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            if pin {
                pin_to(threads);
            }
            listener.set_nonblocking(false).ok();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => drop(s),
                    Err(_) => std::thread::yield_now(),
                }
            }
        })
    };
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
            std::thread::spawn(move || {
                if pin {
                    pin_to(i);
                }
                while !stop.load(Ordering::Relaxed) {
                    match TcpStream::connect(addr) {
                        Ok(s) => {
                            drop(s);
                            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                            if n >= max_connections {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_micros(100));
                        }
                    }
                    if start.elapsed() >= duration {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    // Wake the acceptor with one last connection.
    let _ = TcpStream::connect(addr);
    let _ = acceptor.join();
    Ok(LoadResult {
        connections: done.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
    })
}
