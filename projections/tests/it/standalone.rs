//! A standalone MongoDB server cannot run multi-document transactions, which
//! every commit of the Mongo sink is. No mongod can be installed here, so
//! this test answers the driver itself: a loopback server speaking MongoDB's
//! wire protocol (`OP_MSG`) that describes itself as a standalone (no
//! `setName` in `hello`) and answers a command that starts a transaction as
//! a standalone mongod does (code 20, `IllegalOperation`). The sink must
//! refuse it at connect, saying a replica set is required, instead of
//! serving while every commit fails.

use mongodb::bson::{doc, Document};
use strata_projections::{MongoSink, MongoSinkConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const OP_MSG: i32 = 2013;

/// Starts the server on a free loopback port; `transactions`: whether it
/// takes them (as a MongoDB-compatible server without a replica set may).
async fn standalone(transactions: bool) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, transactions));
        }
    });
    address
}

async fn serve(mut stream: TcpStream, transactions: bool) {
    let mut id: i32 = 0;
    loop {
        let mut header = [0u8; 16];
        if stream.read_exact(&mut header).await.is_err() {
            return;
        }
        let field = |at: usize| i32::from_le_bytes(header[at..at + 4].try_into().unwrap());
        let (length, request_id, op_code) = (field(0), field(4), field(12));
        let mut body = vec![0u8; usize::try_from(length).unwrap() - 16];
        if stream.read_exact(&mut body).await.is_err() || op_code != OP_MSG {
            return;
        }
        // Flag bits, then sections: the command is the body section (kind 0);
        // document sequences (kind 1) are skipped.
        let mut at = 4;
        let mut command = None;
        while at < body.len() {
            let kind = body[at];
            let size = i32::from_le_bytes(body[at + 1..at + 5].try_into().unwrap());
            let size = usize::try_from(size).unwrap();
            if kind == 0 {
                command = Some(Document::from_reader(&mut &body[at + 1..at + 1 + size]).unwrap());
            }
            at += 1 + size;
        }
        let reply = answer(&command.unwrap_or_default(), transactions);
        let mut document = Vec::new();
        reply.to_writer(&mut document).unwrap();
        id += 1;
        let mut message = Vec::with_capacity(21 + document.len());
        message.extend_from_slice(&(21 + document.len() as i32).to_le_bytes());
        message.extend_from_slice(&id.to_le_bytes());
        message.extend_from_slice(&request_id.to_le_bytes());
        message.extend_from_slice(&OP_MSG.to_le_bytes());
        message.extend_from_slice(&0u32.to_le_bytes());
        message.push(0);
        message.extend_from_slice(&document);
        if stream.write_all(&message).await.is_err() {
            return;
        }
    }
}

fn answer(command: &Document, transactions: bool) -> Document {
    let name = command.keys().next().map(String::as_str).unwrap_or_default();
    if command.get_bool("startTransaction") == Ok(true) && !transactions {
        // What a standalone mongod answers.
        return doc! {
            "ok": 0.0,
            "errmsg": "Transaction numbers are only allowed on a replica set member or mongos",
            "code": 20,
            "codeName": "IllegalOperation",
        };
    }
    match name {
        "hello" | "isMaster" | "ismaster" => doc! {
            "helloOk": true,
            "ismaster": true,
            "isWritablePrimary": true,
            "maxBsonObjectSize": 16_777_216,
            "maxMessageSizeBytes": 48_000_000,
            "maxWriteBatchSize": 100_000,
            "localTime": mongodb::bson::DateTime::now(),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": 1,
            "minWireVersion": 0,
            "maxWireVersion": 21,
            "readOnly": false,
            "ok": 1.0,
        },
        "update" => doc! { "n": 1, "nModified": 1, "ok": 1.0 },
        "find" => {
            let namespace = format!("{}.{}", command.get_str("$db").unwrap_or("test"), command.get_str("find").unwrap_or("c"));
            doc! { "cursor": { "id": 0_i64, "ns": namespace, "firstBatch": [] }, "ok": 1.0 }
        }
        _ => doc! { "ok": 1.0 },
    }
}

#[tokio::test]
async fn a_standalone_server_is_refused_at_connect_because_a_replica_set_is_required() {
    let address = standalone(false).await;
    let url = format!("mongodb://{address}/strata_standalone?directConnection=true&serverSelectionTimeoutMS=5000");
    let refused = MongoSink::connect(MongoSinkConfig::new(url)).await.expect_err("a standalone server is refused");
    // The cause is in the error's chain (a message never repeats its source).
    let message = strata_store::chain(&refused);
    assert!(message.contains("replica set required"), "{message}");
    assert!(message.contains("replicaSet=rs0"), "the error says what to do: {message}");
}

/// The same server taking transactions (as a MongoDB-compatible server
/// without a replica set may) is taken: the refusal above comes from the
/// probe transaction, not from the server being a standalone.
#[tokio::test]
async fn a_server_without_a_replica_set_that_runs_transactions_is_taken() {
    let address = standalone(true).await;
    let url = format!("mongodb://{address}/strata_standalone?directConnection=true&serverSelectionTimeoutMS=5000");
    MongoSink::connect(MongoSinkConfig::new(url)).await.expect("a server that runs transactions is taken");
}
