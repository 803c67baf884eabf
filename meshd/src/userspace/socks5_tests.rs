#![allow(clippy::unwrap_used)] // test code

use testkit::fuzz::Rng;

use super::*;

#[test]
fn greeting() {
    assert_eq!(parse_greeting(&[]), Ok(None));
    assert_eq!(parse_greeting(&[5]), Ok(None));
    assert_eq!(parse_greeting(&[5, 2, 0]), Ok(None));
    assert_eq!(
        parse_greeting(&[5, 2, 0, 2, 99]),
        Ok(Some((
            Greeting {
                methods: vec![0, 2]
            },
            4
        )))
    );
    assert_eq!(parse_greeting(&[4, 1, 0]), Err(Socks5Error::Version(4)));
    assert_eq!(parse_greeting(&[5, 0]), Err(Socks5Error::NoMethods));
}

#[test]
fn requests() {
    let v4 = [5, 1, 0, 1, 100, 64, 0, 2, 0x1f, 0x90];
    assert_eq!(
        parse_request(&v4),
        Ok(Some((
            Request {
                command: CMD_CONNECT,
                target: Target::Ip("100.64.0.2:8080".parse().unwrap()),
            },
            10
        )))
    );
    for n in 0..v4.len() {
        assert_eq!(parse_request(&v4[..n]), Ok(None), "prefix {n}");
    }
    let mut v6 = vec![5, 1, 0, 4];
    v6.extend_from_slice(&"fd7a::1".parse::<Ipv6Addr>().unwrap().octets());
    v6.extend_from_slice(&443u16.to_be_bytes());
    assert_eq!(
        parse_request(&v6).unwrap().unwrap().0.target,
        Target::Ip("[fd7a::1]:443".parse().unwrap())
    );
    let mut name = vec![5, 1, 0, 3, 22];
    name.extend_from_slice(b"nodeb.mesh.internal.xy");
    name.extend_from_slice(&80u16.to_be_bytes());
    name.extend_from_slice(b"GET /");
    let (r, used) = parse_request(&name).unwrap().unwrap();
    assert_eq!(
        r.target,
        Target::Domain("nodeb.mesh.internal.xy".into(), 80)
    );
    assert_eq!(&name[used..], b"GET /");
    // BIND is parsed; the server answers "command not supported".
    assert_eq!(
        parse_request(&[5, 2, 0, 1, 1, 2, 3, 4, 0, 1])
            .unwrap()
            .unwrap()
            .0
            .command,
        2
    );
}

#[test]
fn bad_requests() {
    assert_eq!(parse_request(&[4]), Err(Socks5Error::Version(4)));
    assert_eq!(
        parse_request(&[5, 1, 1, 1, 0, 0, 0, 0, 0, 0]),
        Err(Socks5Error::Reserved(1))
    );
    assert_eq!(
        parse_request(&[5, 1, 0, 9, 0]),
        Err(Socks5Error::AddressType(9))
    );
    assert_eq!(
        parse_request(&[5, 1, 0, 3, 0, 0, 80]),
        Err(Socks5Error::Domain)
    );
    assert_eq!(
        parse_request(&[5, 1, 0, 3, 2, 0xff, 0xfe, 0, 80]),
        Err(Socks5Error::Domain)
    );
    assert_eq!(
        Socks5Error::AddressType(9).reply(),
        Reply::AddressTypeNotSupported
    );
}

#[test]
fn replies() {
    assert_eq!(
        encode_reply(Reply::Succeeded, Some("100.64.0.1:50000".parse().unwrap())),
        vec![5, 0, 0, 1, 100, 64, 0, 1, 0xc3, 0x50]
    );
    assert_eq!(
        encode_reply(Reply::HostUnreachable, None),
        vec![5, 4, 0, 1, 0, 0, 0, 0, 0, 0]
    );
    let v6 = encode_reply(Reply::Succeeded, Some("[fd7a::1]:1".parse().unwrap()));
    assert_eq!(v6.len(), 4 + 16 + 2);
    assert_eq!(v6[3], 4);
}

/// Valid messages flipped, truncated, spliced and grown: the parsers answer and never panic, and
/// a message they accept never claims more bytes than it was given.
#[test]
fn mutation_fuzz_never_panics() {
    let mut name = vec![5, 1, 0, 3, 5];
    name.extend_from_slice(b"nodeb\x00\x50");
    let mut v6 = vec![5, 1, 0, 4];
    v6.extend_from_slice(&[0xfd; 16]);
    v6.extend_from_slice(&[1, 187]);
    let fixtures: Vec<Vec<u8>> = vec![
        vec![5, 1, 0],
        vec![5, 3, 0, 1, 2],
        vec![5, 1, 0, 1, 100, 64, 0, 2, 0, 80],
        name,
        v6,
    ];
    let mut rng = Rng(0x5eed_50c5);
    for _ in 0..200_000 {
        let mut b = fixtures[rng.below(fixtures.len())].clone();
        for _ in 0..=rng.below(4) {
            match rng.below(5) {
                0 if !b.is_empty() => {
                    let i = rng.below(b.len());
                    b[i] = rng.next_u64() as u8;
                }
                1 => b.truncate(rng.below(b.len() + 1)),
                2 => {
                    let other = &fixtures[rng.below(fixtures.len())];
                    let at = rng.below(b.len() + 1);
                    b.splice(at..at, other.iter().copied());
                }
                3 => {
                    for _ in 0..rng.below(300) {
                        b.push(rng.next_u64() as u8);
                    }
                }
                _ => {
                    if !b.is_empty() {
                        let i = rng.below(b.len());
                        b[i] = [0, 1, 3, 4, 5, 0xff][rng.below(6)];
                    }
                }
            }
        }
        if let Ok(Some((_, n))) = parse_greeting(&b) {
            assert!(n <= b.len());
        }
        if let Ok(Some((_, n))) = parse_request(&b) {
            assert!(n <= b.len() && n <= MAX_REQUEST);
        }
    }
    // Every byte string of length 0..=2, exhaustively.
    for len in 0..=2usize {
        for v in 0..(1u32 << (8 * len)) {
            let b = &v.to_be_bytes()[4 - len..];
            let _ = parse_greeting(b);
            let _ = parse_request(b);
        }
    }
}

mod through_the_stack {
    //! The proxy over two back-to-back stacks: a real TCP client speaks SOCKS5 to [`serve`].

    use std::net::{IpAddr, SocketAddr};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::super::*;
    use crate::userspace::stack::tests::{pair, B};

    async fn proxy() -> (SocketAddr, crate::userspace::Stack) {
        let (sa, sb) = pair();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let resolve: Resolver = Arc::new(|name: &str| {
            (name == "nodeb" || name == "nodeb.mesh.internal").then_some(IpAddr::V4(B))
        });
        tokio::spawn(serve(l, sa, resolve));
        (addr, sb)
    }

    /// Greets, sends `request`, returns the stream and the reply code.
    async fn request(proxy: SocketAddr, request: &[u8]) -> (TcpStream, u8) {
        let mut c = TcpStream::connect(proxy).await.unwrap();
        c.write_all(&[5, 1, 0]).await.unwrap();
        let mut m = [0u8; 2];
        c.read_exact(&mut m).await.unwrap();
        assert_eq!(m, [5, 0]);
        c.write_all(request).await.unwrap();
        let mut reply = [0u8; 10];
        c.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[0], 5);
        (c, reply[1])
    }

    fn by_name(name: &str, port: u16) -> Vec<u8> {
        let mut r = vec![5, 1, 0, 3, name.len() as u8];
        r.extend_from_slice(name.as_bytes());
        r.extend_from_slice(&port.to_be_bytes());
        r
    }

    async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("timed out")
    }

    #[tokio::test]
    async fn connect_by_name_with_half_close() {
        bounded(async {
            let (proxy, sb) = proxy().await;
            let mut l = sb.listen(80).await.unwrap();
            tokio::spawn(async move {
                let mut c = l.accept().await.unwrap();
                let mut n = 0;
                while let Some(chunk) = c.reader.recv().await {
                    n += chunk.unwrap().len();
                }
                // The client's FIN arrived; our direction is still open.
                let answer = format!("got {n} bytes");
                c.writer.send(answer.as_bytes()).await.unwrap();
            });
            let (mut c, code) = request(proxy, &by_name("nodeb.mesh.internal", 80)).await;
            assert_eq!(code, Reply::Succeeded as u8);
            c.write_all(b"hello").await.unwrap();
            c.shutdown().await.unwrap();
            let mut answer = String::new();
            c.read_to_string(&mut answer).await.unwrap();
            assert_eq!(answer, "got 5 bytes");
        })
        .await;
    }

    #[tokio::test]
    async fn errors_are_socks_replies() {
        bounded(async {
            let (proxy, sb) = proxy().await;
            let (_, code) = request(proxy, &by_name("example.com", 80)).await;
            assert_eq!(code, Reply::HostUnreachable as u8);
            let (_, code) = request(proxy, &by_name("nodeb", 81)).await;
            assert_eq!(code, Reply::ConnectionRefused as u8);
            let (_, code) = request(proxy, &[5, 2, 0, 1, 100, 64, 0, 2, 0, 80]).await;
            assert_eq!(code, Reply::CommandNotSupported as u8);
            let (_, code) = request(proxy, &[5, 1, 0, 1, 192, 0, 2, 1, 0, 80]).await;
            assert_eq!(code, Reply::NetworkUnreachable as u8);

            // A reset from the peer reaches the client as a reset.
            let mut l = sb.listen(82).await.unwrap();
            tokio::spawn(async move {
                let c = l.accept().await.unwrap();
                c.writer.reset();
            });
            let (mut c, code) = request(proxy, &by_name("nodeb", 82)).await;
            assert_eq!(code, Reply::Succeeded as u8);
            let mut buf = [0u8; 16];
            let e = c.read(&mut buf).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        })
        .await;
    }
}
