//! Raw wire protocol: legacy OP_QUERY handshake answered with OP_REPLY, OP_MSG details,
//! and bad messages closing only their own connection.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use mongodb::bson::{doc, Document};

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn op_query(request_id: i32, ns: &str, query: &Document) -> Vec<u8> {
    let body = mongodb::bson::to_vec(query).unwrap();
    let mut msg = Vec::new();
    let len = 16 + 4 + ns.len() + 1 + 4 + 4 + body.len();
    msg.extend_from_slice(&(len as i32).to_le_bytes());
    msg.extend_from_slice(&request_id.to_le_bytes());
    msg.extend_from_slice(&0i32.to_le_bytes());
    msg.extend_from_slice(&2004i32.to_le_bytes());
    msg.extend_from_slice(&0i32.to_le_bytes()); // flags
    msg.extend_from_slice(ns.as_bytes());
    msg.push(0);
    msg.extend_from_slice(&0i32.to_le_bytes()); // numberToSkip
    msg.extend_from_slice(&(-1i32).to_le_bytes()); // numberToReturn
    msg.extend_from_slice(&body);
    msg
}

fn op_msg(request_id: i32, flags: u32, cmd: &Document) -> Vec<u8> {
    let body = mongodb::bson::to_vec(cmd).unwrap();
    let mut msg = Vec::new();
    let len = 16 + 4 + 1 + body.len();
    msg.extend_from_slice(&(len as i32).to_le_bytes());
    msg.extend_from_slice(&request_id.to_le_bytes());
    msg.extend_from_slice(&0i32.to_le_bytes());
    msg.extend_from_slice(&2013i32.to_le_bytes());
    msg.extend_from_slice(&flags.to_le_bytes());
    msg.push(0);
    msg.extend_from_slice(&body);
    msg
}

fn read_message(s: &mut TcpStream) -> std::io::Result<(i32, i32, Vec<u8>)> {
    let mut header = [0u8; 16];
    s.read_exact(&mut header)?;
    let len = i32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    let response_to = i32::from_le_bytes(header[8..12].try_into().unwrap());
    let op = i32::from_le_bytes(header[12..16].try_into().unwrap());
    let mut body = vec![0u8; len - 16];
    s.read_exact(&mut body)?;
    Ok((response_to, op, body))
}

fn msg_reply(s: &mut TcpStream) -> Document {
    let (_, op, body) = read_message(s).unwrap();
    assert_eq!(op, 2013);
    assert_eq!(
        u32::from_le_bytes(body[0..4].try_into().unwrap()),
        0,
        "flags"
    );
    assert_eq!(body[4], 0, "kind 0 section");
    let doc = Document::from_reader(&body[5..]).unwrap();
    let doc_len = i32::from_le_bytes(body[5..9].try_into().unwrap()) as usize;
    assert_eq!(5 + doc_len, body.len(), "exactly one section, no checksum");
    doc
}

/// Whether the peer closed the connection (EOF or reset) rather than replying.
fn is_closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

#[tokio::test]
async fn legacy_op_query_is_master_gets_op_reply() {
    let sb = start();
    let mut s = connect(sb.address());
    s.write_all(&op_query(
        7,
        "admin.$cmd",
        &doc! {"ismaster": 1, "helloOk": true, "client": {"driver": {"name": "raw", "version": "0"}}},
    ))
    .unwrap();
    let (response_to, op, body) = read_message(&mut s).unwrap();
    assert_eq!(response_to, 7);
    assert_eq!(op, 1, "OP_REPLY");
    assert_eq!(i32::from_le_bytes(body[0..4].try_into().unwrap()), 0);
    assert_eq!(i64::from_le_bytes(body[4..12].try_into().unwrap()), 0);
    assert_eq!(i32::from_le_bytes(body[12..16].try_into().unwrap()), 0);
    assert_eq!(i32::from_le_bytes(body[16..20].try_into().unwrap()), 1);
    let reply = Document::from_reader(&body[20..]).unwrap();
    assert_eq!(reply.get_bool("ismaster"), Ok(true));
    assert_eq!(reply.get_bool("helloOk"), Ok(true));
    assert_eq!(reply.get_str("setName"), Ok("rs0"));
    assert!(reply.get_document("$clusterTime").is_ok());
    // The connection then speaks OP_MSG.
    s.write_all(&op_msg(8, 0, &doc! {"ping": 1, "$db": "admin"}))
        .unwrap();
    assert_eq!(msg_reply(&mut s).get_f64("ok"), Ok(1.0));
}

#[tokio::test]
async fn op_query_other_than_handshake_is_refused() {
    let sb = start();
    let mut s = connect(sb.address());
    s.write_all(&op_query(1, "test.$cmd", &doc! {"find": "c"}))
        .unwrap();
    let (_, op, body) = read_message(&mut s).unwrap();
    assert_eq!(op, 1);
    let reply = Document::from_reader(&body[20..]).unwrap();
    assert_eq!(reply.get_f64("ok"), Ok(0.0));
    assert_eq!(as_i64(reply.get("code")), 352);
}

#[tokio::test]
async fn op_msg_kind1_sections_and_more_to_come() {
    let sb = start();
    let mut s = connect(sb.address());
    // insert with a kind-1 "documents" section, unacknowledged (moreToCome).
    let cmd =
        mongodb::bson::to_vec(&doc! {"insert": "c", "$db": "t", "writeConcern": {"w": 0}}).unwrap();
    let d1 = mongodb::bson::to_vec(&doc! {"_id": 1}).unwrap();
    let d2 = mongodb::bson::to_vec(&doc! {"_id": 2}).unwrap();
    let ident = b"documents\0";
    let sec_len = 4 + ident.len() + d1.len() + d2.len();
    let mut body = Vec::new();
    body.extend_from_slice(&2u32.to_le_bytes()); // moreToCome
    body.push(0);
    body.extend_from_slice(&cmd);
    body.push(1);
    body.extend_from_slice(&(sec_len as i32).to_le_bytes());
    body.extend_from_slice(ident);
    body.extend_from_slice(&d1);
    body.extend_from_slice(&d2);
    let mut msg = Vec::new();
    msg.extend_from_slice(&((16 + body.len()) as i32).to_le_bytes());
    msg.extend_from_slice(&1i32.to_le_bytes());
    msg.extend_from_slice(&0i32.to_le_bytes());
    msg.extend_from_slice(&2013i32.to_le_bytes());
    msg.extend_from_slice(&body);
    s.write_all(&msg).unwrap();
    // No reply to moreToCome: the next reply answers the count.
    s.write_all(&op_msg(2, 0, &doc! {"count": "c", "$db": "t"}))
        .unwrap();
    let (response_to, _, _) = {
        let reply = msg_reply(&mut s);
        assert_eq!(as_i64(reply.get("n")), 2);
        (2, 0, ())
    };
    assert_eq!(response_to, 2);
}

#[tokio::test]
async fn missing_db_is_an_error_not_a_crash() {
    let sb = start();
    let mut s = connect(sb.address());
    s.write_all(&op_msg(1, 0, &doc! {"ping": 1})).unwrap();
    let reply = msg_reply(&mut s);
    assert_eq!(reply.get_f64("ok"), Ok(0.0));
    assert!(reply.get("code").is_some());
}

#[tokio::test]
async fn malformed_message_closes_only_that_connection() {
    let sb = start();
    let mut healthy = connect(sb.address());
    healthy
        .write_all(&op_msg(1, 0, &doc! {"ping": 1, "$db": "admin"}))
        .unwrap();
    msg_reply(&mut healthy);

    // Garbage body: a BSON length that overruns the message.
    let mut bad = connect(sb.address());
    let mut msg = Vec::new();
    msg.extend_from_slice(&26i32.to_le_bytes());
    msg.extend_from_slice(&1i32.to_le_bytes());
    msg.extend_from_slice(&0i32.to_le_bytes());
    msg.extend_from_slice(&2013i32.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    msg.push(0);
    msg.extend_from_slice(&[0xff, 0xff, 0, 0, 0]);
    bad.write_all(&msg).unwrap();
    assert!(is_closed(&mut bad));

    // Oversized: header claims more than maxMessageSizeBytes.
    let mut big = connect(sb.address());
    let mut msg = Vec::new();
    msg.extend_from_slice(&(64 * 1024 * 1024i32).to_le_bytes());
    msg.extend_from_slice(&1i32.to_le_bytes());
    msg.extend_from_slice(&0i32.to_le_bytes());
    msg.extend_from_slice(&2013i32.to_le_bytes());
    big.write_all(&msg).unwrap();
    assert!(is_closed(&mut big));

    // Unknown opcode.
    let mut odd = connect(sb.address());
    let mut msg = Vec::new();
    msg.extend_from_slice(&20i32.to_le_bytes());
    msg.extend_from_slice(&1i32.to_le_bytes());
    msg.extend_from_slice(&0i32.to_le_bytes());
    msg.extend_from_slice(&9999i32.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    odd.write_all(&msg).unwrap();
    assert!(is_closed(&mut odd));

    // The first connection and new ones still work.
    healthy
        .write_all(&op_msg(2, 0, &doc! {"ping": 1, "$db": "admin"}))
        .unwrap();
    assert_eq!(msg_reply(&mut healthy).get_f64("ok"), Ok(1.0));
    let client = client(&sb).await;
    run(&client, "admin", doc! {"ping": 1}).await.unwrap();
}
