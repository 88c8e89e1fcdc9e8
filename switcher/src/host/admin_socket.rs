//! A load balancer's admin socket on this host, for the controller: one
//! command of HAProxy's runtime API in, its whole reply out. The agent only
//! carries the text; the controller reads it (see `fleet::lb`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{at, HostError};

/// How long a read or write on the socket may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The longest reply read: `show stat` of a few thousand servers fits.
pub const MAX_REPLY: u64 = 16 << 20;

/// Sends `command` (one line) to the runtime API socket at `socket` and
/// returns what it answered, read to the end (HAProxy closes the
/// connection after one command when the socket is not in interactive
/// mode). Waits at most `timeout` for each read or write.
pub fn command(socket: &Path, command: &str, timeout: Duration) -> Result<String, HostError> {
    if command.contains(['\n', '\r']) {
        return Err(HostError::Input(format!("an admin socket command is one line, not {command:?}")));
    }
    let mut stream = UnixStream::connect(socket).map_err(at(socket))?;
    stream.set_read_timeout(Some(timeout)).map_err(at(socket))?;
    stream.set_write_timeout(Some(timeout)).map_err(at(socket))?;
    stream.write_all(format!("{command}\n").as_bytes()).map_err(at(socket))?;
    let mut reply = Vec::new();
    stream.take(MAX_REPLY + 1).read_to_end(&mut reply).map_err(at(socket))?;
    if reply.len() as u64 > MAX_REPLY {
        return Err(HostError::Input(format!(
            "{}: the reply to {command:?} is longer than {MAX_REPLY} bytes",
            socket.display()
        )));
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_command_goes_out_as_one_line_and_the_reply_is_read_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = Vec::new();
            let mut byte = [0u8];
            while s.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            s.write_all(b"admin\n\n").unwrap();
            String::from_utf8(line).unwrap()
        });
        assert_eq!(command(&path, "show cli level", Duration::from_secs(5)).unwrap(), "admin\n\n");
        assert_eq!(server.join().unwrap(), "show cli level");
    }

    #[test]
    fn a_missing_socket_and_a_second_line_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = command(&dir.path().join("none.sock"), "show stat", Duration::from_secs(1)).unwrap_err();
        assert!(missing.to_string().contains("none.sock"), "{missing}");
        let two = command(&dir.path().join("none.sock"), "show stat\nshutdown", Duration::from_secs(1)).unwrap_err();
        assert!(two.to_string().contains("one line"), "{two}");
    }
}
