//! ProxyJump: the bytes of a jumped connection carried between a bastion's
//! channel and the socket the target's session runs over.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

/// Carries a jumped connection: bytes between the bastion's direct-tcpip
/// channel and the socket the target's session runs over, until either
/// side closes. The bastion's session lives as long as this does. Waits in
/// poll(2) on both sockets between bursts, so an idle connection costs
/// nothing.
pub(super) fn pump(bastion: ssh2::Session, link: OwnedFd, mut channel: ssh2::Channel, mut socket: UnixStream) {
    use rustix::event::{poll, PollFd, PollFlags};

    bastion.set_blocking(false);
    if socket.set_nonblocking(true).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 << 10];
    // Read from one side, not yet written to the other.
    let (mut to_socket, mut to_channel): (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
    let (mut channel_done, mut socket_done) = (false, false);
    loop {
        let mut moved = false;
        // Each way: read when nothing waits to be written, write what waits.
        let ended = channel.eof();
        moved |= match (
            take(&mut channel, &mut buf, &mut to_socket, &mut channel_done, ended),
            give(&mut socket, &mut to_socket),
        ) {
            (Some(a), Some(b)) => a || b,
            _ => return,
        };
        moved |= match (
            take(&mut socket, &mut buf, &mut to_channel, &mut socket_done, true),
            give(&mut channel, &mut to_channel),
        ) {
            (Some(a), Some(b)) => a || b,
            _ => return,
        };
        if channel_done && to_socket.is_empty() {
            return;
        }
        if socket_done && to_channel.is_empty() {
            let _ = channel.send_eof();
            return;
        }
        if !moved {
            // Ask only for what the loop will act on: poll(2) is level-
            // triggered, and a side asked about but not served spins.
            let mut link_wants = PollFlags::empty();
            if to_socket.is_empty() && !channel_done || !to_channel.is_empty() {
                // Data to read, or the window adjust a blocked write awaits.
                link_wants |= PollFlags::IN;
            }
            if matches!(bastion.block_directions(), ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both) {
                link_wants |= PollFlags::OUT;
            }
            let mut socket_wants = PollFlags::empty();
            if to_channel.is_empty() && !socket_done {
                socket_wants |= PollFlags::IN;
            }
            if !to_socket.is_empty() {
                socket_wants |= PollFlags::OUT;
            }
            let mut fds = [PollFd::new(&link, link_wants), PollFd::new(&socket, socket_wants)];
            // A bound on the wait, for data libssh2 holds unread.
            let tick = rustix::time::Timespec { tv_sec: 0, tv_nsec: 50_000_000 };
            match poll(&mut fds, Some(&tick)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return,
            }
        }
    }
}

/// One half of the pump's read side: fills `pending` from `from` when it is
/// empty. A read of 0 ends the side when `zero_is_end` (a channel's 0 is
/// only an end with its EOF). Whether bytes moved; `None` when the side broke.
fn take(
    from: &mut dyn Read,
    buf: &mut [u8],
    pending: &mut Vec<u8>,
    done: &mut bool,
    zero_is_end: bool,
) -> Option<bool> {
    if !pending.is_empty() || *done {
        return Some(false);
    }
    match from.read(buf) {
        Ok(0) => {
            *done = zero_is_end;
            Some(false)
        }
        Ok(n) => {
            pending.extend_from_slice(&buf[..n]);
            Some(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Some(false),
        Err(_) => None,
    }
}

/// The write side: as much of `pending` as `to` takes now.
fn give(to: &mut dyn Write, pending: &mut Vec<u8>) -> Option<bool> {
    if pending.is_empty() {
        return Some(false);
    }
    match to.write(pending) {
        Ok(n) => {
            pending.drain(..n);
            Some(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Some(false),
        Err(_) => None,
    }
}
