//! Who is on the other end of an accepted loopback connection: the process
//! holding the client's socket, found through /proc. This lets one listener
//! per destination (like a Kubernetes Service) fault traffic by its sender,
//! which matters for the broker: Kafka clients reconnect to the address
//! the broker advertises, so per-sender ports would not survive.

use std::net::SocketAddr;

use super::Component;

/// The inode of the client's socket of the connection `client → server`.
pub fn client_socket_inode(client: SocketAddr, server: SocketAddr) -> Option<u64> {
    ["/proc/net/tcp", "/proc/net/tcp6"].into_iter().find_map(|table| {
        let text = std::fs::read_to_string(table).ok()?;
        find_inode(&text, client.port(), server.port())
    })
}

/// In a /proc/net/tcp table, the inode of the socket whose local port is
/// `local_port` and whose remote port is `remote_port`.
fn find_inode(table: &str, local_port: u16, remote_port: u16) -> Option<u64> {
    let port = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, inode) = (f.get(1)?, f.get(2)?, f.get(9)?);
        (port(local)? == local_port && port(remote)? == remote_port)
            .then(|| inode.parse().ok())
            .flatten()
    })
}

/// Which of `candidates` (a process id and what it is) holds socket `inode`.
pub fn owner(inode: u64, candidates: &[(u32, Component)]) -> Option<Component> {
    let wanted = format!("socket:[{inode}]");
    candidates.iter().find_map(|&(pid, component)| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str()))
            .then_some(component)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_client_socket_in_a_tcp_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n\
   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1\n\
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1\n";
        // The client (port 50000) connected to the server's port 8080.
        assert_eq!(find_inode(table, 50000, 8080), Some(222));
        assert_eq!(find_inode(table, 8080, 50000), Some(333));
        assert_eq!(find_inode(table, 50001, 8080), None);
    }

    #[tokio::test]
    async fn names_the_process_that_opened_a_real_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(server).await.unwrap();
        let (_accepted, client) = listener.accept().await.unwrap();
        let inode = client_socket_inode(client, server).expect("the connection is in /proc/net/tcp");
        let me = std::process::id();
        assert_eq!(owner(inode, &[(me, Component::Load)]), Some(Component::Load));
        // The parent of a test process does not hold it.
        let parent = std::os::unix::process::parent_id();
        assert_eq!(owner(inode, &[(parent, Component::Postgres)]), None);
    }
}
