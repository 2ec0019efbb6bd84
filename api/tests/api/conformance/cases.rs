//! The table: the cases of Autobahn|Testsuite's sections 1–7, numbered in
//! its manner, for one endpoint.
//!
//! `/echo` echoes, so a case there expects its message back byte for byte.
//! `/ws/{room}` speaks JSON, so there a text message is a `{"type":"ping"}`
//! padded (or carrying the case's text in a field) and the answer is a pong;
//! a binary message, which that endpoint refuses, is answered by close 1003.

use super::codec::{BINARY, CLOSE, CONTINUATION, Frame, PING, PONG, TEXT, close_payload};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Echo,
    Room,
}

/// A frame to write, in one write or `.1` bytes at a time.
pub struct Send(pub Frame, pub usize);

#[derive(Clone)]
pub enum Expect {
    /// This control frame or whole message, byte for byte.
    Frame(u8, Vec<u8>),
    /// A close frame with one of these codes (1005: no code), then the end
    /// of the TCP connection.
    Close(Vec<u16>),
}

pub struct Case {
    pub section: u8,
    pub id: String,
    pub what: String,
    pub send: Vec<Send>,
    pub expect: Vec<Expect>,
}

pub const SECTIONS: [(u8, &str); 7] = [
    (1, "framing"),
    (2, "pings and pongs"),
    (3, "reserved bits"),
    (4, "opcodes"),
    (5, "fragmentation"),
    (6, "UTF-8"),
    (7, "close handshake"),
];

/// What `/ws/{room}` answers, and what makes it answer.
pub const ROOM_PING: &str = r#"{"type":"ping"}"#;
pub const ROOM_PONG: &str = r#"{"type":"pong"}"#;

/// A message a case sends and what the endpoint answers to it.
struct Msg {
    opcode: u8,
    bytes: Vec<u8>,
    reply: Expect,
}

impl Msg {
    fn whole(&self) -> Send {
        Send(Frame::new(self.opcode, self.bytes.clone()), 0)
    }

    /// The message in `n` fragments of nearly equal length (some empty when
    /// it is shorter than `n`).
    fn fragments(&self, n: usize) -> Vec<Frame> {
        let len = self.bytes.len();
        (0..n)
            .map(|i| {
                let part = self.bytes[len * i / n..len * (i + 1) / n].to_vec();
                let opcode = if i == 0 { self.opcode } else { CONTINUATION };
                Frame::new(opcode, part).fin(i + 1 == n)
            })
            .collect()
    }

    /// The message split after byte `at`.
    fn split_at(&self, at: usize) -> [Frame; 2] {
        let (head, tail) = self.bytes.split_at(at);
        [
            Frame::new(self.opcode, head).fin(false),
            Frame::new(CONTINUATION, tail),
        ]
    }
}

fn whole(frames: impl IntoIterator<Item = Frame>) -> Vec<Send> {
    frames.into_iter().map(|f| Send(f, 0)).collect()
}

fn fails(code: u16) -> Expect {
    Expect::Close(vec![code])
}

fn close(code: u16, reason: &[u8]) -> Frame {
    Frame::new(CLOSE, close_payload(code, reason))
}

/// `len` bytes of printable ASCII.
fn filler(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

struct Table {
    endpoint: Endpoint,
    /// The largest frame and message the endpoint takes.
    limit: usize,
    cases: Vec<Case>,
    section: u8,
    group: u8,
    number: u32,
}

impl Table {
    fn group(&mut self, section: u8, group: u8) {
        (self.section, self.group, self.number) = (section, group, 0);
    }

    /// Numbers the case whether or not this endpoint takes it (`None`), so
    /// ids mean the same on every endpoint.
    fn add(&mut self, what: impl Into<String>, case: Option<(Vec<Send>, Vec<Expect>)>) {
        self.number += 1;
        let Some((send, mut expect)) = case else {
            return;
        };
        // Nothing can follow a close (a room's 1003 ends an echo case early).
        if let Some(at) = expect.iter().position(|e| matches!(e, Expect::Close(_))) {
            expect.truncate(at + 1);
        }
        self.cases.push(Case {
            section: self.section,
            id: format!("{}.{}.{}", self.section, self.group, self.number),
            what: what.into(),
            send,
            expect,
        });
    }

    fn room(&self) -> bool {
        self.endpoint == Endpoint::Room
    }

    /// A text message of exactly `len` bytes; `None` on a room when a ping
    /// does not fit.
    fn text(&self, len: usize) -> Option<Msg> {
        let reply = |bytes: &[u8]| {
            if len > self.limit {
                fails(1009)
            } else {
                Expect::Frame(TEXT, bytes.to_vec())
            }
        };
        if !self.room() {
            let bytes = filler(len);
            return Some(Msg {
                opcode: TEXT,
                reply: reply(&bytes),
                bytes,
            });
        }
        let pad = len.checked_sub(ROOM_PING.len())?;
        // JSON allows whitespace after the value.
        let bytes = [ROOM_PING.as_bytes(), &vec![b' '; pad]].concat();
        Some(Msg {
            opcode: TEXT,
            bytes,
            reply: reply(ROOM_PONG.as_bytes()),
        })
    }

    /// A binary message of exactly `len` bytes (every byte value occurs).
    fn binary(&self, len: usize) -> Msg {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        let reply = if len > self.limit {
            fails(1009)
        } else if self.room() {
            fails(1003)
        } else {
            Expect::Frame(BINARY, bytes.clone())
        };
        Msg {
            opcode: BINARY,
            bytes,
            reply,
        }
    }

    fn message(&self, opcode: u8, len: usize) -> Option<Msg> {
        match opcode {
            TEXT => self.text(len),
            _ => Some(self.binary(len)),
        }
    }

    /// A text message carrying `text`.
    fn utf8(&self, text: &str) -> Msg {
        let (bytes, reply) = if self.room() {
            let ping = serde_json::json!({"type": "ping", "text": text}).to_string();
            (ping.into_bytes(), ROOM_PONG.as_bytes().to_vec())
        } else {
            (text.as_bytes().to_vec(), text.as_bytes().to_vec())
        };
        Msg {
            opcode: TEXT,
            bytes,
            reply: Expect::Frame(TEXT, reply),
        }
    }

    /// A text message with `bad` inside valid text; returns where `bad` starts.
    fn bad_utf8(&self, bad: &[u8]) -> (Msg, usize) {
        let (head, tail): (&[u8], &[u8]) = if self.room() {
            (
                r#"{"type":"ping","text":"κόσμε-"#.as_bytes(),
                br#"-edited"}"#,
            )
        } else {
            ("κόσμε-".as_bytes(), b"-edited")
        };
        let msg = Msg {
            opcode: TEXT,
            bytes: [head, bad, tail].concat(),
            reply: fails(1007),
        };
        (msg, head.len())
    }

    fn small(&self) -> Msg {
        self.text(32).expect("32 bytes fit a ping")
    }
}

pub fn all(endpoint: Endpoint, limit: usize) -> Vec<Case> {
    let mut t = Table {
        endpoint,
        limit,
        cases: Vec::new(),
        section: 0,
        group: 0,
        number: 0,
    };
    framing(&mut t);
    pings(&mut t);
    reserved_bits(&mut t);
    opcodes(&mut t);
    fragmentation(&mut t);
    utf8(&mut t);
    closing(&mut t);
    t.cases
}

fn framing(t: &mut Table) {
    let lengths = [0, 125, 126, 127, 128, 1000, 4096, 65535, 65536, t.limit];
    for (group, opcode, kind) in [(1, TEXT, "text"), (2, BINARY, "binary")] {
        t.group(1, group);
        for len in lengths {
            let case = t
                .message(opcode, len)
                .map(|m| (vec![m.whole()], vec![m.reply.clone()]));
            t.add(format!("{kind}, {len} bytes"), case);
        }
        let case = t
            .message(opcode, t.limit + 1)
            .map(|m| (vec![m.whole()], vec![m.reply.clone()]));
        t.add(format!("{kind}, one byte over the limit: 1009"), case);
        let case = t.message(opcode, t.limit + 1).map(|m| {
            let reply = m.reply.clone();
            (whole(m.fragments(2)), vec![reply])
        });
        t.add(
            format!("{kind} over the limit in two fragments under it: 1009"),
            case,
        );
        let case = t.message(opcode, 65536).map(|m| {
            (
                vec![Send(Frame::new(opcode, m.bytes.clone()), 997)],
                vec![m.reply.clone()],
            )
        });
        t.add(format!("{kind}, 65536 bytes written 997 at a time"), case);
        let case = t.message(opcode, 128).map(|m| {
            (
                vec![Send(Frame::new(opcode, m.bytes.clone()), 1)],
                vec![m.reply.clone()],
            )
        });
        t.add(format!("{kind}, 128 bytes written one at a time"), case);
    }
}

fn pings(t: &mut Table) {
    t.group(2, 1);
    let ping = |payload: &[u8]| {
        Some((
            whole([Frame::new(PING, payload)]),
            vec![Expect::Frame(PONG, payload.to_vec())],
        ))
    };
    t.add("ping, no payload", ping(b""));
    t.add("ping, text payload", ping(b"Hello, world!"));
    t.add(
        "ping, binary payload",
        ping(&[0, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0, 0xff]),
    );
    t.add("ping, 125 bytes", ping(&filler(125)));
    t.add(
        "ping, 126 bytes: 1002",
        Some((whole([Frame::new(PING, filler(126))]), vec![fails(1002)])),
    );
    t.add(
        "ping, 125 bytes written one at a time",
        Some((
            vec![Send(Frame::new(PING, filler(125)), 1)],
            vec![Expect::Frame(PONG, filler(125))],
        )),
    );
    t.add(
        "ping whose payload is not UTF-8 (control payloads are not text)",
        ping(&[0xc0, 0xaf, 0xed, 0xa0, 0x80]),
    );
    t.add(
        "unsolicited pong, no payload: ignored",
        Some((whole([Frame::new(PONG, "")]), vec![])),
    );
    t.add(
        "unsolicited pong with payload: ignored",
        Some((whole([Frame::new(PONG, "unsolicited")]), vec![])),
    );
    t.add(
        "unsolicited pong, then ping: one pong",
        Some((
            whole([
                Frame::new(PONG, "unsolicited"),
                Frame::new(PING, "solicited"),
            ]),
            vec![Expect::Frame(PONG, b"solicited".to_vec())],
        )),
    );
    let m = t.small();
    t.add(
        "unsolicited pong, then a message: still answered",
        Some((
            vec![Send(Frame::new(PONG, "unsolicited"), 0), m.whole()],
            vec![m.reply.clone()],
        )),
    );
    let payloads: Vec<Vec<u8>> = (0..10).map(|i| format!("ping {i}").into_bytes()).collect();
    let pongs = || {
        payloads
            .iter()
            .map(|p| Expect::Frame(PONG, p.clone()))
            .collect()
    };
    t.add(
        "10 pings in a row: 10 pongs in order",
        Some((
            whole(payloads.iter().map(|p| Frame::new(PING, p.clone()))),
            pongs(),
        )),
    );
    t.add(
        "10 pings written one byte at a time: 10 pongs in order",
        Some((
            payloads
                .iter()
                .map(|p| Send(Frame::new(PING, p.clone()), 1))
                .collect(),
            pongs(),
        )),
    );
    t.add(
        "fragmented ping: 1002",
        Some((
            whole([
                Frame::new(PING, "frag").fin(false),
                Frame::new(CONTINUATION, "ment"),
            ]),
            vec![fails(1002)],
        )),
    );
    t.add(
        "pong, 126 bytes: 1002",
        Some((whole([Frame::new(PONG, filler(126))]), vec![fails(1002)])),
    );
}

fn reserved_bits(t: &mut Table) {
    let names = [
        "", "RSV3", "RSV2", "RSV2+3", "RSV1", "RSV1+3", "RSV1+2", "RSV1+2+3",
    ];
    t.group(3, 1);
    for (opcode, kind) in [(TEXT, "text"), (BINARY, "binary"), (PING, "ping")] {
        for rsv in 1..=7u8 {
            let payload = match opcode {
                PING => b"ping".to_vec(),
                _ => t.message(opcode, 32).expect("32 bytes fit").bytes,
            };
            t.add(
                format!("{kind} with {}: 1002", names[usize::from(rsv)]),
                Some((
                    whole([Frame::new(opcode, payload).rsv(rsv)]),
                    vec![fails(1002)],
                )),
            );
        }
    }
    t.group(3, 2);
    let m = t.small();
    for (chunk, how) in [(0, "frame by frame"), (1, "one byte at a time")] {
        t.add(
            format!("a message, the same with RSV2, then a ping ({how}): answer, then 1002"),
            Some((
                vec![
                    Send(Frame::new(m.opcode, m.bytes.clone()), chunk),
                    Send(Frame::new(m.opcode, m.bytes.clone()).rsv(2), chunk),
                    Send(Frame::new(PING, "never answered"), chunk),
                ],
                vec![m.reply.clone(), fails(1002)],
            )),
        );
    }
    t.add(
        "close with RSV1+2+3: 1002",
        Some((whole([close(1000, b"").rsv(7)]), vec![fails(1002)])),
    );
    t.add(
        "pong with RSV2: 1002",
        Some((whole([Frame::new(PONG, "pong").rsv(2)]), vec![fails(1002)])),
    );
    let [head, tail] = m.split_at(10);
    t.add(
        "continuation frame with RSV1: 1002",
        Some((whole([head, tail.rsv(4)]), vec![fails(1002)])),
    );
}

fn opcodes(t: &mut Table) {
    let m = t.small();
    for (group, opcodes, kind) in [
        (1, 0x3..=0x7u8, "reserved data opcode"),
        (2, 0xB..=0xFu8, "reserved control opcode"),
    ] {
        t.group(4, group);
        for opcode in opcodes {
            t.add(
                format!("{kind} {opcode:#x}, no payload: 1002"),
                Some((whole([Frame::new(opcode, "")]), vec![fails(1002)])),
            );
            t.add(
                format!("a message, {kind} {opcode:#x} with payload, a ping: answer, then 1002"),
                Some((
                    vec![
                        m.whole(),
                        Send(Frame::new(opcode, "reserved"), 0),
                        Send(Frame::new(PING, "never answered"), 0),
                    ],
                    vec![m.reply.clone(), fails(1002)],
                )),
            );
        }
    }
}

fn fragmentation(t: &mut Table) {
    t.group(5, 1);
    for (opcode, kind) in [(PING, "ping"), (PONG, "pong"), (CLOSE, "close")] {
        let payload = if opcode == CLOSE {
            close_payload(1000, b"")
        } else {
            b"fragmented".to_vec()
        };
        t.add(
            format!("{kind} with FIN clear: 1002"),
            Some((
                whole([
                    Frame::new(opcode, payload).fin(false),
                    Frame::new(CONTINUATION, "").fin(true),
                ]),
                vec![fails(1002)],
            )),
        );
    }
    let m = t.text(200).expect("200 bytes fit a ping");
    let [head, tail] = m.split_at(100);
    t.add(
        "ping with FIN clear inside a fragmented message: 1002",
        Some((
            whole([
                head.clone(),
                Frame::new(PING, "fragmented").fin(false),
                tail.clone(),
            ]),
            vec![fails(1002)],
        )),
    );

    t.group(5, 2);
    for (opcode, kind) in [(TEXT, "text"), (BINARY, "binary")] {
        for n in [2, 3, 10, 100] {
            let case = t
                .message(opcode, 200)
                .map(|m| (whole(m.fragments(n)), vec![m.reply.clone()]));
            t.add(format!("{kind} in {n} fragments: one message"), case);
        }
        let case = t.message(opcode, 200).map(|m| {
            let sends = m.fragments(2).into_iter().map(|f| Send(f, 1)).collect();
            (sends, vec![m.reply.clone()])
        });
        t.add(
            format!("{kind} in 2 fragments written one byte at a time"),
            case,
        );
        let case = t
            .message(opcode, 0)
            .map(|m| (whole(m.fragments(3)), vec![m.reply.clone()]));
        t.add(format!("{kind}: 3 empty fragments"), case);
        let case = t.message(opcode, 200).map(|m| {
            let frames = [
                Frame::new(opcode, "").fin(false),
                Frame::new(CONTINUATION, m.bytes.clone()).fin(false),
                Frame::new(CONTINUATION, ""),
            ];
            (whole(frames), vec![m.reply.clone()])
        });
        t.add(format!("{kind}: empty first and last fragments"), case);
    }

    t.group(5, 3);
    for (chunk, how) in [(0, ""), (1, ", one byte at a time")] {
        t.add(
            format!("ping between two fragments{how}: pong, then the message"),
            Some((
                vec![
                    Send(head.clone(), chunk),
                    Send(Frame::new(PING, "between"), chunk),
                    Send(tail.clone(), chunk),
                ],
                vec![Expect::Frame(PONG, b"between".to_vec()), m.reply.clone()],
            )),
        );
    }
    t.add(
        "pong between two fragments: the message only",
        Some((
            whole([head.clone(), Frame::new(PONG, "between"), tail.clone()]),
            vec![m.reply.clone()],
        )),
    );
    let five = m.fragments(5);
    let mut with_pings = five.clone();
    with_pings.insert(4, Frame::new(PING, "after 4"));
    with_pings.insert(1, Frame::new(PING, "after 1"));
    for (chunk, how) in [(0, ""), (1, ", one byte at a time")] {
        t.add(
            format!("5 fragments, pings after the 1st and the 4th{how}: 2 pongs, the message"),
            Some((
                with_pings.iter().map(|f| Send(f.clone(), chunk)).collect(),
                vec![
                    Expect::Frame(PONG, b"after 1".to_vec()),
                    Expect::Frame(PONG, b"after 4".to_vec()),
                    m.reply.clone(),
                ],
            )),
        );
    }

    t.group(5, 4);
    let cont = |fin: bool| Frame::new(CONTINUATION, "continued").fin(fin);
    for (chunk, how) in [(0, ""), (1, ", one byte at a time")] {
        t.add(
            format!("continuation, FIN set, nothing to continue{how}: 1002"),
            Some((vec![Send(cont(true), chunk), m.whole()], vec![fails(1002)])),
        );
        t.add(
            format!("continuation, FIN clear, nothing to continue{how}: 1002"),
            Some((vec![Send(cont(false), chunk), m.whole()], vec![fails(1002)])),
        );
    }
    t.add(
        "a fragmented message, then a stray continuation: answer, then 1002",
        Some((
            whole([
                head.clone(),
                tail.clone(),
                cont(false),
                Frame::new(TEXT, "x").fin(false),
            ]),
            vec![m.reply.clone(), fails(1002)],
        )),
    );
    t.add(
        "continuation FIN clear, text FIN clear, continuation FIN set: 1002",
        Some((
            whole([cont(false), head.clone(), tail.clone()]),
            vec![fails(1002)],
        )),
    );
    t.add(
        "continuation FIN set, text FIN clear, continuation FIN set: 1002",
        Some((
            whole([cont(true), head.clone(), tail.clone()]),
            vec![fails(1002)],
        )),
    );
    for (first, second, what) in [
        (TEXT, TEXT, "text, then text instead of a continuation"),
        (TEXT, BINARY, "text, then binary instead of a continuation"),
        (BINARY, TEXT, "binary, then text instead of a continuation"),
    ] {
        t.add(
            format!("{what}: 1002"),
            Some((
                whole([
                    Frame::new(first, head.payload.clone()).fin(false),
                    Frame::new(second, tail.payload.clone()),
                ]),
                vec![fails(1002)],
            )),
        );
    }
}

fn utf8(t: &mut Table) {
    t.group(6, 1);
    let valid = [
        ("Hello-µ@ßöäüàá-UTF-8!!", "mixed Latin-1"),
        ("κόσμε", "Greek"),
        ("\u{0}", "U+0000"),
        ("\u{7f}", "U+007F, the last 1-byte"),
        ("\u{80}", "U+0080, the first 2-byte"),
        ("\u{7ff}", "U+07FF, the last 2-byte"),
        ("\u{800}", "U+0800, the first 3-byte"),
        ("\u{d7ff}", "U+D7FF, below the surrogates"),
        ("\u{e000}", "U+E000, above the surrogates"),
        ("\u{fffd}", "U+FFFD"),
        ("\u{fffe}", "U+FFFE, a noncharacter"),
        ("\u{ffff}", "U+FFFF, the last 3-byte"),
        ("\u{10000}", "U+10000, the first 4-byte"),
        ("\u{10ffff}", "U+10FFFF, the last code point"),
        (
            "a\u{7f}\u{80}\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}z",
            "every boundary",
        ),
    ];
    for (text, what) in valid {
        let m = t.utf8(text);
        t.add(
            format!("valid: {what}"),
            Some((vec![m.whole()], vec![m.reply.clone()])),
        );
    }
    t.group(6, 2);
    for (text, what) in [valid[0], valid[1], valid[14]] {
        let m = t.utf8(text);
        let n = m.bytes.len();
        t.add(
            format!("valid, one byte per fragment: {what}"),
            Some((whole(m.fragments(n)), vec![m.reply.clone()])),
        );
        t.add(
            format!("valid, written one byte at a time: {what}"),
            Some((
                vec![Send(Frame::new(TEXT, m.bytes.clone()), 1)],
                vec![m.reply.clone()],
            )),
        );
    }

    let invalid: [(&[u8], &str); 33] = [
        (b"\xed\xa0\x80", "U+D800 between valid text"),
        (b"\x80", "a lone continuation byte"),
        (b"\xbf", "a lone 0xBF"),
        (b"\x80\xbf\x80", "three continuation bytes"),
        (b"\xc0 ", "0xC0 before a space"),
        (b"\xdf ", "a 2-byte start before a space"),
        (b"\xe0 ", "a 3-byte start before a space"),
        (b"\xef ", "0xEF before a space"),
        (b"\xf0 ", "a 4-byte start before a space"),
        (b"\xf7 ", "0xF7 before a space"),
        (b"\xc2", "a 2-byte sequence cut short"),
        (b"\xe0\xa0", "a 3-byte sequence cut short"),
        (b"\xf0\x90\x80", "a 4-byte sequence cut short"),
        (b"\xc0\xaf", "overlong '/' in 2 bytes"),
        (b"\xe0\x80\xaf", "overlong '/' in 3 bytes"),
        (b"\xf0\x80\x80\xaf", "overlong '/' in 4 bytes"),
        (b"\xc1\xbf", "the largest overlong 2-byte"),
        (b"\xe0\x9f\xbf", "the largest overlong 3-byte"),
        (b"\xf0\x8f\xbf\xbf", "the largest overlong 4-byte"),
        (b"\xc0\x80", "overlong NUL"),
        (b"\xed\xad\xbf", "U+DB7F"),
        (b"\xed\xae\x80", "U+DB80"),
        (b"\xed\xaf\xbf", "U+DBFF"),
        (b"\xed\xb0\x80", "U+DC00"),
        (b"\xed\xbf\xbf", "U+DFFF"),
        (b"\xed\xa0\x80\xed\xb0\x80", "a surrogate pair"),
        (b"\xf4\x90\x80\x80", "U+110000"),
        (b"\xf7\xbf\xbf\xbf", "U+1FFFFF"),
        (b"\xf8\x88\x80\x80\x80", "a 5-byte sequence"),
        (b"\xfc\x84\x80\x80\x80\x80", "a 6-byte sequence"),
        (b"\xfe", "0xFE"),
        (b"\xff", "0xFF"),
        (b"\xfe\xfe\xff\xff", "0xFE 0xFE 0xFF 0xFF"),
    ];
    t.group(6, 3);
    for (bad, what) in invalid {
        let (m, _) = t.bad_utf8(bad);
        t.add(
            format!("invalid: {what}: 1007"),
            Some((vec![m.whole()], vec![fails(1007)])),
        );
    }
    t.group(6, 4);
    for (bad, what) in invalid {
        let (m, at) = t.bad_utf8(bad);
        t.add(
            format!("invalid, split inside the sequence: {what}: 1007"),
            Some((whole(m.split_at(at + 1)), vec![fails(1007)])),
        );
    }
    t.group(6, 5);
    let (m, _) = t.bad_utf8(invalid[0].0);
    let n = m.bytes.len();
    t.add(
        "invalid, one byte per fragment: 1007",
        Some((whole(m.fragments(n)), vec![fails(1007)])),
    );
    t.add(
        "invalid, written one byte at a time: 1007",
        Some((vec![Send(m.whole().0, 1)], vec![fails(1007)])),
    );
    t.add(
        "invalid in the first fragment, valid last fragment: 1007",
        Some((
            whole([
                Frame::new(TEXT, m.bytes.clone()).fin(false),
                Frame::new(CONTINUATION, "valid"),
            ]),
            vec![fails(1007)],
        )),
    );
}

fn closing(t: &mut Table) {
    t.group(7, 1);
    let m = t.small();
    let bye = || close(1000, b"");
    t.add(
        "a message, then close: answer, then close",
        Some((
            vec![m.whole(), Send(bye(), 0)],
            vec![m.reply.clone(), Expect::Close(vec![1000])],
        )),
    );
    t.add(
        "close twice: one close, the second ignored",
        Some((whole([bye(), bye()]), vec![Expect::Close(vec![1000])])),
    );
    t.add(
        "ping after close: not answered",
        Some((
            whole([bye(), Frame::new(PING, "late")]),
            vec![Expect::Close(vec![1000])],
        )),
    );
    t.add(
        "a message after close: ignored",
        Some((
            vec![Send(bye(), 0), m.whole()],
            vec![Expect::Close(vec![1000])],
        )),
    );
    let [head, tail] = m.split_at(10);
    t.add(
        "close between fragments: close, the rest ignored",
        Some((whole([head, bye(), tail]), vec![Expect::Close(vec![1000])])),
    );
    let big = t.text(1000).expect("1000 bytes fit a ping");
    let mut send: Vec<Send> = (0..10).map(|_| big.whole()).collect();
    send.push(Send(bye(), 0));
    let mut expect: Vec<Expect> = (0..10).map(|_| big.reply.clone()).collect();
    expect.push(Expect::Close(vec![1000]));
    t.add(
        "10 messages of 1000 bytes, then close: 10 answers, then close",
        Some((send, expect)),
    );

    t.group(7, 3);
    let one =
        |frame: Frame, codes: &[u16]| Some((whole([frame]), vec![Expect::Close(codes.to_vec())]));
    t.add(
        "close, no payload",
        one(Frame::new(CLOSE, ""), &[1005, 1000]),
    );
    t.add(
        "close, 1-byte payload: 1002",
        one(Frame::new(CLOSE, [0x03]), &[1002]),
    );
    t.add("close 1000, no reason", one(bye(), &[1000]));
    t.add(
        "close 1000 with a reason",
        one(close(1000, b"Hello World!"), &[1000]),
    );
    t.add(
        "close 1000, 123-byte reason",
        one(close(1000, &filler(123)), &[1000]),
    );
    t.add(
        "close 1000, 124-byte reason (126-byte payload): 1002",
        one(close(1000, &filler(124)), &[1002]),
    );
    t.add(
        "close 1000 with a multi-byte reason",
        one(close(1000, "κόσμε \u{10ffff}".as_bytes()), &[1000]),
    );
    t.add(
        "close 1000, reason not UTF-8: 1002 or 1007",
        one(
            close(1000, b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80"),
            &[1002, 1007],
        ),
    );
    t.add(
        "close written one byte at a time",
        Some((
            vec![Send(close(1000, b"slowly"), 1)],
            vec![Expect::Close(vec![1000])],
        )),
    );

    t.group(7, 7);
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        t.add(
            format!("close {code}: echoed"),
            one(close(code, b""), &[code, 1000]),
        );
    }
    t.group(7, 9);
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        t.add(
            format!("close {code}: 1002"),
            one(close(code, b""), &[1002]),
        );
    }
}
