//! Connection handshake and authentication: hello/isMaster, saslStart/saslContinue,
//! logout, connectionStatus.

use bson::{doc, spec::BinarySubtype, Binary, Bson, DateTime, Document};

use crate::auth::roles::privileges_of;
use crate::auth::scram::{Mechanism, ScramConversation};
use crate::dispatch::Ctx;
use crate::error::{codes, CmdResult, CommandError};
use crate::wire::{MAX_BSON_SIZE, MAX_MESSAGE_SIZE};

pub fn hello(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let server = ctx.server;
    let primary = server.is_primary();
    let legacy = ctx.name != "hello";
    let mut reply = doc! {};
    if ctx.cmd.get_bool("helloOk").is_ok() {
        reply.insert("helloOk", true);
    }
    if legacy {
        reply.insert("ismaster", primary);
    } else {
        reply.insert("isWritablePrimary", primary);
    }
    reply.insert("secondary", !primary);
    reply.insert("setName", server.options.set_name.clone());
    reply.insert("setVersion", 1);
    if matches!(server.options.role, crate::sharding::NodeRole::ConfigServer) {
        reply.insert("configsvr", 2);
    }
    reply.insert("hosts", vec![server.address.clone()]);
    if primary {
        reply.insert("primary", server.address.clone());
        reply.insert("electionId", server.election_id());
    }
    reply.insert("me", server.address.clone());
    let now = DateTime::now();
    let (ts, majority) = {
        let mut storage = server.storage.lock();
        (storage.cluster_time(), storage.majority_point())
    };
    let lag = server
        .faults
        .majority_lag_ms
        .load(std::sync::atomic::Ordering::SeqCst);
    let majority_wall = DateTime::from_millis(now.timestamp_millis() - lag as i64);
    let term = server.term.load(std::sync::atomic::Ordering::SeqCst);
    reply.insert(
        "lastWrite",
        doc! {"opTime": {"ts": ts, "t": term}, "lastWriteDate": now,
        "majorityOpTime": {"ts": majority, "t": term}, "majorityWriteDate": majority_wall},
    );
    reply.insert("maxBsonObjectSize", MAX_BSON_SIZE as i32);
    reply.insert("maxMessageSizeBytes", MAX_MESSAGE_SIZE as i32);
    reply.insert("maxWriteBatchSize", 100_000);
    reply.insert("localTime", now);
    reply.insert("logicalSessionTimeoutMinutes", 30);
    reply.insert("connectionId", ctx.conn.id as i32);
    reply.insert("minWireVersion", 0);
    reply.insert("maxWireVersion", server.max_wire_version());
    reply.insert("readOnly", false);
    if let Ok(user) = ctx.cmd.get_str("saslSupportedMechs") {
        let (db, name) = user.split_once('.').unwrap_or(("admin", user));
        if let Some(mechs) = server.users.lookup(db, name).map(|u| u.mechanisms()) {
            reply.insert(
                "saslSupportedMechs",
                mechs.iter().map(|m| m.name()).collect::<Vec<_>>(),
            );
        }
    }
    if let Ok(spec) = ctx.cmd.get_document("speculativeAuthenticate") {
        let db = spec.get_str("db").unwrap_or("admin").to_string();
        if let Ok(start) = sasl_start_with(ctx, spec, &db) {
            reply.insert("speculativeAuthenticate", start);
        }
    }
    Ok(reply)
}

fn payload_bytes(cmd: &Document) -> CmdResult<Vec<u8>> {
    match cmd.get("payload") {
        Some(Bson::Binary(b)) => Ok(b.bytes.clone()),
        Some(Bson::String(s)) => Ok(s.as_bytes().to_vec()),
        _ => Err(CommandError::new(
            codes::BAD_VALUE,
            "Missing required field 'payload'",
        )),
    }
}

fn binary(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    }
}

fn sasl_start_with(ctx: &mut Ctx<'_>, cmd: &Document, db: &str) -> CmdResult<Document> {
    let mechanism = cmd
        .get_str("mechanism")
        .map_err(|_| CommandError::new(codes::BAD_VALUE, "Missing required field 'mechanism'"))?;
    let mech = Mechanism::parse(mechanism)?;
    let payload = payload_bytes(cmd)?;
    let (conversation, server_first) =
        ScramConversation::start(mech, db, &payload, &ctx.server.users)?;
    ctx.conn.conversation = Some(conversation);
    Ok(doc! {"conversationId": 1, "done": false, "payload": binary(server_first)})
}

pub fn sasl_start(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let cmd = ctx.cmd.clone();
    let db = ctx.db.clone();
    sasl_start_with(ctx, &cmd, &db)
}

pub fn sasl_continue(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let payload = payload_bytes(ctx.cmd)?;
    let Some(conversation) = ctx.conn.conversation.as_mut() else {
        return Err(CommandError::new(
            codes::PROTOCOL_ERROR,
            "No SASL session state found",
        ));
    };
    if conversation.is_done() {
        // The optional empty final exchange of clients that do not skip it.
        ctx.conn.conversation = None;
        return Ok(doc! {"conversationId": 1, "done": true, "payload": binary(Vec::new())});
    }
    let reply = match conversation.step(&payload) {
        Ok(r) => r,
        Err(e) => {
            ctx.conn.conversation = None;
            return Err(e);
        }
    };
    if let Some(user) = conversation.user().cloned() {
        ctx.conn
            .users
            .retain(|u| !(u.user == user.user && u.db == user.db));
        ctx.conn.users.push(user);
    }
    let skip_empty = true;
    if skip_empty {
        // Drivers send options {skipEmptyExchange: true}; those that don't send one more
        // empty saslContinue, answered above.
    }
    Ok(doc! {"conversationId": 1, "done": true, "payload": binary(reply)})
}

pub fn logout(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    ctx.conn.users.clear();
    Ok(doc! {})
}

pub fn connection_status(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let users: Vec<Bson> = ctx
        .conn
        .users
        .iter()
        .map(|u| Bson::Document(doc! {"user": u.user.clone(), "db": u.db.clone()}))
        .collect();
    let roles = ctx.roles();
    let role_docs: Vec<Bson> = roles
        .iter()
        .map(|r| Bson::Document(doc! {"role": r.role.clone(), "db": r.db.clone()}))
        .collect();
    let mut auth_info = doc! {"authenticatedUsers": users, "authenticatedUserRoles": role_docs};
    if ctx.cmd.get_bool("showPrivileges").unwrap_or(false) {
        auth_info.insert("authenticatedUserPrivileges", privileges_of(&roles));
    }
    Ok(doc! {"authInfo": auth_info})
}
