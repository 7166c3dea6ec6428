//! `Type=dbus`: a minimal client of the system bus that watches one bus name.
//!
//! A dbus service counts as started once its `BusName=` has an owner on the
//! system bus, and (as in systemd) a running one whose name is released is
//! stopped. This module is the wire side only: it connects to the bus
//! (`DBUS_SYSTEM_BUS_ADDRESS`, default `unix:path=/run/dbus/system_bus_socket`),
//! authenticates with SASL `EXTERNAL` (the kernel vouches for our uid), says
//! `Hello`, subscribes to `NameOwnerChanged` for the name and asks
//! `NameHasOwner` once, then reports each change as a [`BusEvent`] to the
//! engine, which feeds it to the machine (the decision is the machine's).
//!
//! The messages are marshalled by hand after the D-Bus specification
//! ("Message Format"): little-endian, a 12-byte fixed header, an array of
//! (code, variant) header fields, the body 8-byte aligned. Only what this
//! needs is here: method calls with string arguments out; method returns,
//! errors and signals whose bodies are strings and booleans in.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The system bus when `DBUS_SYSTEM_BUS_ADDRESS` is not set (the specification's default).
pub const DEFAULT_SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";

/// The largest message read: the bus only sends us short replies and
/// `NameOwnerChanged` signals (three bus names); a peer announcing more is
/// broken or hostile, and is not given the memory.
const MAX_MESSAGE: usize = 64 * 1024;

/// While the bus cannot be reached, how long before trying again: the bus
/// may be a unit started at the same moment, and a connect attempt on a
/// local socket costs microseconds.
const RETRY: Duration = Duration::from_millis(500);

/// One SASL exchange or call must not hang the watch on a wedged bus.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

const BUS_NAME: &str = "org.freedesktop.DBus";
const BUS_PATH: &str = "/org/freedesktop/DBus";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message truncated")]
    Short,
    #[error("not a little-endian D-Bus 1 message")]
    BadHeader,
    #[error("message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLong(usize),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("unsupported header field type {0:?}")]
    Unsupported(char),
}

/// Message types (the specification's numbering).
pub const METHOD_CALL: u8 = 1;
pub const METHOD_RETURN: u8 = 2;
pub const ERROR: u8 = 3;
pub const SIGNAL: u8 = 4;

/// Header field codes.
const FIELD_PATH: u8 = 1;
const FIELD_INTERFACE: u8 = 2;
const FIELD_MEMBER: u8 = 3;
const FIELD_ERROR_NAME: u8 = 4;
const FIELD_REPLY_SERIAL: u8 = 5;
const FIELD_DESTINATION: u8 = 6;
const FIELD_SIGNATURE: u8 = 8;

fn pad_to(buf: &mut Vec<u8>, align: usize) {
    while buf.len() % align != 0 {
        buf.push(0);
    }
}

fn put_u32(buf: &mut Vec<u8>, v: u32) {
    pad_to(buf, 4);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// A STRING or OBJECT_PATH: u32 length, the bytes, a NUL.
fn put_string(buf: &mut Vec<u8>, s: &str) {
    put_u32(buf, s.len() as u32);
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
}

/// A SIGNATURE: one byte of length, the bytes, a NUL.
fn put_signature(buf: &mut Vec<u8>, s: &str) {
    buf.push(s.len() as u8);
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
}

/// One header field: a STRUCT (8-aligned) of the code and a VARIANT.
fn put_field(buf: &mut Vec<u8>, code: u8, sig: &str, put: impl FnOnce(&mut Vec<u8>)) {
    pad_to(buf, 8);
    buf.push(code);
    put_signature(buf, sig);
    put(buf);
}

/// A method call on the bus itself (`org.freedesktop.DBus`) whose arguments are all strings.
pub fn method_call(serial: u32, member: &str, args: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    for arg in args {
        put_string(&mut body, arg);
    }
    let mut msg = vec![b'l', METHOD_CALL, 0, 1];
    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    msg.extend_from_slice(&serial.to_le_bytes());
    // The fields array's length, filled in once they are written; they start at 16, already 8-aligned.
    msg.extend_from_slice(&[0; 4]);
    let start = msg.len();
    put_field(&mut msg, FIELD_PATH, "o", |b| put_string(b, BUS_PATH));
    put_field(&mut msg, FIELD_DESTINATION, "s", |b| put_string(b, BUS_NAME));
    put_field(&mut msg, FIELD_INTERFACE, "s", |b| put_string(b, BUS_NAME));
    put_field(&mut msg, FIELD_MEMBER, "s", |b| put_string(b, member));
    if !args.is_empty() {
        put_field(&mut msg, FIELD_SIGNATURE, "g", |b| put_signature(b, &"s".repeat(args.len())));
    }
    let fields_len = (msg.len() - start) as u32;
    msg[12..16].copy_from_slice(&fields_len.to_le_bytes());
    pad_to(&mut msg, 8);
    msg.extend_from_slice(&body);
    msg
}

/// A received message, as far as the watch reads one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub kind: u8,
    pub serial: u32,
    pub reply_serial: Option<u32>,
    pub interface: Option<String>,
    pub member: Option<String>,
    pub error_name: Option<String>,
    pub signature: String,
    /// The body, starting at offset 0 (its alignment is that of an 8-aligned start).
    pub body: Vec<u8>,
}

/// Reads values at 8-aligned-relative offsets out of a byte slice, never past its end.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn align(&mut self, n: usize) -> Result<(), WireError> {
        let to = self.pos.div_ceil(n) * n;
        if to > self.buf.len() {
            return Err(WireError::Short);
        }
        self.pos = to;
        Ok(())
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Short)?;
        let got = self.buf.get(self.pos..end).ok_or(WireError::Short)?;
        self.pos = end;
        Ok(got)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.align(4)?;
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Text followed by its NUL, `len` bytes long.
    fn text(&mut self, len: usize) -> Result<String, WireError> {
        let b = self.bytes(len)?;
        if self.u8()? != 0 {
            return Err(WireError::Malformed("string without its NUL"));
        }
        String::from_utf8(b.to_vec()).map_err(|_| WireError::Malformed("string that is not UTF-8"))
    }

    fn string(&mut self) -> Result<String, WireError> {
        let len = self.u32()? as usize;
        self.text(len)
    }

    fn signature(&mut self) -> Result<String, WireError> {
        let len = self.u8()? as usize;
        self.text(len)
    }

    /// A header field's value of basic type `sig`; values the watch does not use are skipped.
    fn basic(&mut self, sig: &str) -> Result<Option<Value>, WireError> {
        let code = match sig.as_bytes() {
            [c] => *c as char,
            _ => return Err(WireError::Malformed("header field variant")),
        };
        Ok(match code {
            's' | 'o' => Some(Value::Str(self.string()?)),
            'g' => Some(Value::Str(self.signature()?)),
            'u' => Some(Value::U32(self.u32()?)),
            'y' => self.u8().map(|_| None)?,
            'b' | 'i' | 'h' => self.u32().map(|_| None)?,
            'n' | 'q' => {
                self.align(2)?;
                self.bytes(2).map(|_| None)?
            }
            'x' | 't' | 'd' => {
                self.align(8)?;
                self.bytes(8).map(|_| None)?
            }
            other => return Err(WireError::Unsupported(other)),
        })
    }
}

enum Value {
    Str(String),
    U32(u32),
}

/// How many bytes the whole message has, from its 16-byte start (the fixed
/// header and the fields array's length).
pub fn message_len(start: &[u8; 16]) -> Result<usize, WireError> {
    if start[0] != b'l' || start[3] != 1 {
        return Err(WireError::BadHeader);
    }
    let body = u32::from_le_bytes([start[4], start[5], start[6], start[7]]) as usize;
    let fields = u32::from_le_bytes([start[12], start[13], start[14], start[15]]) as usize;
    let total = 16usize.saturating_add(fields).div_ceil(8).saturating_mul(8).saturating_add(body);
    if total > MAX_MESSAGE {
        return Err(WireError::TooLong(total));
    }
    Ok(total)
}

/// Parses one whole message (as [`message_len`] measured it).
pub fn parse(buf: &[u8]) -> Result<Message, WireError> {
    let start: &[u8; 16] = buf.get(..16).and_then(|b| b.try_into().ok()).ok_or(WireError::Short)?;
    let total = message_len(start)?;
    if buf.len() < total {
        return Err(WireError::Short);
    }
    let mut c = Cursor { buf: &buf[..total], pos: 0 };
    c.bytes(1)?;
    let kind = c.u8()?;
    c.bytes(2)?;
    let body_len = c.u32()? as usize;
    let serial = c.u32()?;
    let fields_len = c.u32()? as usize;
    let fields_end = c.pos.checked_add(fields_len).filter(|e| *e <= total).ok_or(WireError::Short)?;
    let mut msg = Message { kind, serial, ..Message::default() };
    while c.pos < fields_end {
        c.align(8)?;
        let code = c.u8()?;
        let sig = c.signature()?;
        let value = c.basic(&sig)?;
        match (code, value) {
            (FIELD_REPLY_SERIAL, Some(Value::U32(v))) => msg.reply_serial = Some(v),
            (FIELD_INTERFACE, Some(Value::Str(v))) => msg.interface = Some(v),
            (FIELD_MEMBER, Some(Value::Str(v))) => msg.member = Some(v),
            (FIELD_ERROR_NAME, Some(Value::Str(v))) => msg.error_name = Some(v),
            (FIELD_SIGNATURE, Some(Value::Str(v))) => msg.signature = v,
            _ => {}
        }
    }
    if c.pos != fields_end {
        return Err(WireError::Malformed("header fields array"));
    }
    c.align(8)?;
    msg.body = c.bytes(body_len)?.to_vec();
    if kind == 0 || kind > SIGNAL {
        return Err(WireError::Malformed("message type"));
    }
    Ok(msg)
}

impl Message {
    /// The body's leading strings (all of them must be `s`), e.g. NameOwnerChanged's (name, old, new).
    pub fn strings(&self) -> Result<Vec<String>, WireError> {
        if !self.signature.bytes().all(|b| b == b's') {
            return Err(WireError::Malformed("body: strings expected"));
        }
        let mut c = Cursor { buf: &self.body, pos: 0 };
        self.signature.bytes().map(|_| c.string()).collect()
    }

    /// A body of one BOOLEAN (NameHasOwner's answer).
    pub fn boolean(&self) -> Result<bool, WireError> {
        if self.signature != "b" {
            return Err(WireError::Malformed("body: a boolean expected"));
        }
        match (Cursor { buf: &self.body, pos: 0 }).u32()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Malformed("boolean that is neither 0 nor 1")),
        }
    }
}

/// Where to connect, from a D-Bus server address (`unix:path=...` or
/// `unix:abstract=...`; several may be given, `;`-separated; the first usable one wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusAddress {
    Path(String),
    Abstract(String),
}

pub fn parse_address(address: &str) -> Option<BusAddress> {
    address.split(';').find_map(|one| {
        let rest = one.strip_prefix("unix:")?;
        rest.split(',').find_map(|kv| match kv.split_once('=')? {
            ("path", v) => Some(BusAddress::Path(unescape(v)?)),
            ("abstract", v) => Some(BusAddress::Abstract(unescape(v)?)),
            _ => None,
        })
    })
}

/// Address values escape bytes as `%XX`.
fn unescape(v: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut bytes = v.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// The system bus's address for this process (`DBUS_SYSTEM_BUS_ADDRESS`, or the default).
pub fn system_bus_address() -> String {
    std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_else(|_| DEFAULT_SYSTEM_BUS.to_string())
}

/// The SASL line that authenticates us as `uid` (EXTERNAL: the uid's decimal text, hex-encoded).
pub fn auth_line(uid: u32) -> String {
    let hex: String = uid.to_string().bytes().map(|b| format!("{b:02x}")).collect();
    format!("AUTH EXTERNAL {hex}\r\n")
}

/// What the watch tells the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// The name has an owner.
    Owned,
    /// The name has no owner (any more).
    Released,
    /// The bus cannot be reached or refused us: why (sent again only when the reason changes).
    Unreachable(String),
}

/// A connection to the bus, authenticated and past `Hello`.
struct Connection {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    serial: u32,
}

impl Connection {
    async fn open(address: &str) -> Result<Connection, String> {
        let stream = match parse_address(address) {
            Some(BusAddress::Path(path)) => {
                UnixStream::connect(&path).await.map_err(|e| format!("cannot connect to the system bus {path}: {e}"))?
            }
            Some(BusAddress::Abstract(name)) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .map_err(|e| format!("system bus address {address}: {e}"))?;
                let std = std::os::unix::net::UnixStream::connect_addr(&addr)
                    .map_err(|e| format!("cannot connect to the system bus @{name}: {e}"))?;
                std.set_nonblocking(true).map_err(|e| e.to_string())?;
                UnixStream::from_std(std).map_err(|e| e.to_string())?
            }
            None => return Err(format!("system bus address {address:?}: no unix:path= or unix:abstract= in it")),
        };
        let (read, write) = stream.into_split();
        let mut conn = Connection { reader: BufReader::new(read), writer: write, serial: 0 };
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, conn.authenticate())
            .await
            .map_err(|_| "the system bus did not answer the authentication".to_string())?;
        answer.map_err(|e| format!("system bus authentication: {e}"))?;
        conn.call("Hello", &[]).await.map_err(|e| format!("system bus Hello: {e}"))?;
        Ok(conn)
    }

    async fn authenticate(&mut self) -> Result<(), String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let mut hello = vec![0u8];
        hello.extend_from_slice(auth_line(uid).as_bytes());
        self.writer.write_all(&hello).await.map_err(|e| e.to_string())?;
        let mut line = String::new();
        // The bus answers one short line; a longer one is not a bus.
        (&mut self.reader).take(512).read_line(&mut line).await.map_err(|e| e.to_string())?;
        if !line.starts_with("OK ") {
            return Err(format!("refused: {:?}", line.trim_end()));
        }
        self.writer.write_all(b"BEGIN\r\n").await.map_err(|e| e.to_string())
    }

    async fn read_message(&mut self) -> Result<Message, String> {
        let mut start = [0u8; 16];
        self.reader.read_exact(&mut start).await.map_err(|e| e.to_string())?;
        let total = message_len(&start).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; total];
        buf[..16].copy_from_slice(&start);
        self.reader.read_exact(&mut buf[16..]).await.map_err(|e| e.to_string())?;
        parse(&buf).map_err(|e| e.to_string())
    }

    /// Calls a method of the bus and waits for its answer (signals that arrive meanwhile go to `seen`).
    async fn call_seeing(&mut self, member: &str, args: &[&str], seen: &mut Vec<Message>) -> Result<Message, String> {
        self.serial += 1;
        let serial = self.serial;
        self.writer.write_all(&method_call(serial, member, args)).await.map_err(|e| e.to_string())?;
        let wait = async {
            loop {
                let msg = self.read_message().await?;
                if msg.reply_serial == Some(serial) {
                    if msg.kind == ERROR {
                        let text = msg.strings().ok().and_then(|s| s.into_iter().next()).unwrap_or_default();
                        return Err(format!("{}: {text}", msg.error_name.as_deref().unwrap_or("error")));
                    }
                    return Ok(msg);
                }
                if msg.kind == SIGNAL {
                    seen.push(msg);
                }
            }
        };
        tokio::time::timeout(ANSWER_TIMEOUT, wait).await.map_err(|_| format!("no answer to {member}"))?
    }

    async fn call(&mut self, member: &str, args: &[&str]) -> Result<Message, String> {
        self.call_seeing(member, args, &mut Vec::new()).await
    }
}

/// Whether a signal says who owns `name` now: Some(true) owned, Some(false) released.
fn owner_change(msg: &Message, name: &str) -> Option<bool> {
    if msg.kind != SIGNAL || msg.member.as_deref() != Some("NameOwnerChanged") {
        return None;
    }
    match msg.strings().ok()?.as_slice() {
        [n, _old, new] if n == name => Some(!new.is_empty()),
        _ => None,
    }
}

/// One connection's watch: subscribe, ask once, then follow the signals. Returns why it ended.
async fn watch_once(address: &str, name: &str, report: &mut impl FnMut(BusEvent) -> bool) -> Result<(), String> {
    let mut conn = Connection::open(address).await?;
    let rule =
        format!("type='signal',sender='{BUS_NAME}',interface='{BUS_NAME}',member='NameOwnerChanged',arg0='{name}'");
    let mut seen = Vec::new();
    conn.call_seeing("AddMatch", &[&rule], &mut seen).await?;
    let owned = conn.call_seeing("NameHasOwner", &[name], &mut seen).await?.boolean().map_err(|e| e.to_string())?;
    // A change signalled before the answer is older than it: the answer wins.
    let mut last = owned;
    if !report(if owned { BusEvent::Owned } else { BusEvent::Released }) {
        return Ok(());
    }
    loop {
        let msg = conn.read_message().await.map_err(|e| format!("the system bus connection ended: {e}"))?;
        if let Some(now) = owner_change(&msg, name) {
            if now != last {
                last = now;
                if !report(if now { BusEvent::Owned } else { BusEvent::Released }) {
                    return Ok(());
                }
            }
        }
    }
}

/// Watches `name` on the system bus until `report` returns false (the
/// receiver is gone) or the task is aborted (the run ended). A bus that
/// cannot be reached is tried again every [`RETRY`]; each new reason is reported once.
pub async fn watch(address: String, name: String, mut report: impl FnMut(BusEvent) -> bool) {
    let mut last_reason: Option<String> = None;
    loop {
        if let Err(why) = watch_once(&address, &name, &mut report).await {
            if last_reason.as_ref() != Some(&why) {
                if !report(BusEvent::Unreachable(why.clone())) {
                    return;
                }
                last_reason = Some(why);
            }
        } else {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Hello` as the specification lays it out, byte for byte.
    #[test]
    fn hello_is_marshalled_as_the_specification_lays_it_out() {
        let msg = method_call(1, "Hello", &[]);
        let mut want: Vec<u8> = vec![b'l', 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0];
        let mut fields: Vec<u8> = Vec::new();
        let field = |fields: &mut Vec<u8>, code: u8, sig: u8, s: &str| {
            while fields.len() % 8 != 0 {
                fields.push(0);
            }
            fields.extend_from_slice(&[code, 1, sig, 0]);
            fields.extend_from_slice(&(s.len() as u32).to_le_bytes());
            fields.extend_from_slice(s.as_bytes());
            fields.push(0);
        };
        field(&mut fields, 1, b'o', "/org/freedesktop/DBus");
        field(&mut fields, 6, b's', "org.freedesktop.DBus");
        field(&mut fields, 2, b's', "org.freedesktop.DBus");
        field(&mut fields, 3, b's', "Hello");
        want.extend_from_slice(&(fields.len() as u32).to_le_bytes());
        want.extend_from_slice(&fields);
        while want.len() % 8 != 0 {
            want.push(0);
        }
        assert_eq!(msg, want);
        // Spot checks against the layout, independent of the helper above.
        assert_eq!(&msg[16..24], &[1, 1, b'o', 0, 21, 0, 0, 0]);
        assert_eq!(&msg[24..46], b"/org/freedesktop/DBus\0");
        assert_eq!(msg.len() % 8, 0);
        assert_eq!(message_len(msg[..16].try_into().unwrap()), Ok(msg.len()));
    }

    #[test]
    fn name_has_owner_carries_a_signature_and_one_string_body() {
        let msg = method_call(7, "NameHasOwner", &["org.freedesktop.Avahi"]);
        // Body length 4 + 21 + 1, serial 7.
        assert_eq!(&msg[..12], &[b'l', 1, 0, 1, 26, 0, 0, 0, 7, 0, 0, 0]);
        let body = &msg[msg.len() - 26..];
        assert_eq!(&body[..4], &[21, 0, 0, 0]);
        assert_eq!(&body[4..], b"org.freedesktop.Avahi\0");
        // The SIGNATURE field ("g" holding "s") is the last field, before the padding to the body.
        let fields_len = u32::from_le_bytes(msg[12..16].try_into().unwrap()) as usize;
        let fields = &msg[16..16 + fields_len];
        // The array's length covers the last field up to its NUL, not the padding after it.
        assert_eq!(&fields[fields.len() - 7..], &[8, 1, b'g', 0, 1, b's', 0]);
        assert_eq!((msg.len() - 26) % 8, 0, "the body starts 8-aligned");
        // Our own parser reads it back.
        let parsed = parse(&msg).unwrap();
        assert_eq!(parsed.member.as_deref(), Some("NameHasOwner"));
        assert_eq!(parsed.strings().unwrap(), ["org.freedesktop.Avahi"]);
    }

    /// A reply as the bus sends it: METHOD_RETURN, REPLY_SERIAL, SIGNATURE "b".
    fn reply(serial: u32, value: u32) -> Vec<u8> {
        let mut m = vec![b'l', METHOD_RETURN, 1, 1, 4, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0];
        let start = m.len();
        put_field(&mut m, FIELD_REPLY_SERIAL, "u", |b| put_u32(b, serial));
        put_field(&mut m, FIELD_SIGNATURE, "g", |b| put_signature(b, "b"));
        let len = (m.len() - start) as u32;
        m[12..16].copy_from_slice(&len.to_le_bytes());
        pad_to(&mut m, 8);
        m.extend_from_slice(&value.to_le_bytes());
        m
    }

    #[test]
    fn a_reply_is_parsed_and_bad_or_short_ones_are_errors() {
        let good = reply(3, 1);
        let m = parse(&good).unwrap();
        assert_eq!((m.kind, m.reply_serial, m.boolean()), (METHOD_RETURN, Some(3), Ok(true)));
        assert_eq!(parse(&reply(3, 0)).unwrap().boolean(), Ok(false));
        assert!(parse(&reply(3, 2)).unwrap().boolean().is_err(), "a boolean is 0 or 1");
        // Every truncation is an error, never a panic.
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_err(), "{n} bytes");
        }
        let mut big_endian = good.clone();
        big_endian[0] = b'B';
        assert_eq!(parse(&big_endian), Err(WireError::BadHeader));
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse(&huge), Err(WireError::TooLong(_))));
        let mut fields_past_end = good.clone();
        fields_past_end[12..16].copy_from_slice(&200u32.to_le_bytes());
        assert!(parse(&fields_past_end).is_err());
        let mut no_nul = good.clone();
        no_nul[16 + 8 + 6] = 1; // the NUL after the signature field's "b"
        assert!(parse(&no_nul).is_err());
        let mut odd_type = good.clone();
        odd_type[16 + 8 + 2] = b'v';
        assert_eq!(parse(&odd_type), Err(WireError::Unsupported('v')));
        // Garbage of every length: errors only.
        let noise: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for n in 0..noise.len() {
            let mut b = noise[..n].to_vec();
            if !b.is_empty() {
                b[0] = b'l';
            }
            if b.len() > 3 {
                b[3] = 1;
            }
            let _ = parse(&b);
        }
    }

    #[test]
    fn a_name_owner_changed_signal_says_owned_or_released() {
        let mut m = Message { kind: SIGNAL, member: Some("NameOwnerChanged".into()), ..Message::default() };
        m.signature = "sss".into();
        let body = |name: &str, old: &str, new: &str| {
            let mut b = Vec::new();
            for s in [name, old, new] {
                put_string(&mut b, s);
            }
            b
        };
        m.body = body("org.x", "", ":1.4");
        assert_eq!(owner_change(&m, "org.x"), Some(true));
        assert_eq!(owner_change(&m, "org.y"), None);
        m.body = body("org.x", ":1.4", "");
        assert_eq!(owner_change(&m, "org.x"), Some(false));
        m.body.truncate(9);
        assert_eq!(owner_change(&m, "org.x"), None, "a short body is no change");
    }

    #[test]
    fn addresses_and_the_auth_line() {
        assert_eq!(parse_address(DEFAULT_SYSTEM_BUS), Some(BusAddress::Path("/run/dbus/system_bus_socket".into())));
        assert_eq!(
            parse_address("tcp:host=x;unix:abstract=/tmp/dbus-x,guid=12"),
            Some(BusAddress::Abstract("/tmp/dbus-x".into()))
        );
        assert_eq!(parse_address("unix:path=/tmp/a%20b"), Some(BusAddress::Path("/tmp/a b".into())));
        assert_eq!(parse_address("tcp:host=x"), None);
        assert_eq!(auth_line(0), "AUTH EXTERNAL 30\r\n");
        assert_eq!(auth_line(1000), "AUTH EXTERNAL 31303030\r\n");
    }
}
