//! Edit and recall through the real binary: each is a message of its own in the
//! conversation (`kind`, `ref`), delivered like any; history and sync show the
//! original as it now is; and the refusals: someone else's message, a recalled
//! one, an edit as the target, an unknown seq, a window that has passed. A
//! group's owner and admins recall anyone's message at any time.

use std::time::Duration;

use imqtt_tests::Server;
use imqtt_tests::client::{Api, Device};
use serde_json::{Value, json};

fn patch(api: &Api, uid: &str, path: &str, body: &Value) -> reqwest::RequestBuilder {
    api.request(reqwest::Method::PATCH, uid, path).json(body)
}

/// An edit of `path` by `uid` to "x", refused with `status` and `code`.
async fn refused(api: &Api, uid: &str, path: &str, status: u16, code: &str) {
    api.call(patch(api, uid, path, &json!({"body": "x"})))
        .await
        .error(status, code);
}

/// The stored message `seq` of `conv`, as `uid` reads it in history.
async fn stored(api: &Api, uid: &str, conv: &str, seq: u64) -> Value {
    let (page, _) = api
        .page(uid, conv, &format!("after={}&limit=1", seq - 1))
        .await;
    page.into_iter().next().expect("the message")
}

#[tokio::test]
async fn an_edit_and_a_recall_are_messages_and_history_shows_the_latest() {
    let server = Server::start().await;
    let api = Api::new(&server);
    let mut bob = Device::connect(&server, "bob", "bob-phone", &["users/bob/inbox"]).await;
    api.send("ann", "bob", json!({"text": "helo"})).await;
    api.send("ann", "bob", json!({"text": "second"})).await;
    for _ in 0..2 {
        bob.message_on("users/bob/inbox").await;
    }
    let path = "/v1/conversations/dm:ann:bob/messages/1";

    let edit = api
        .call(patch(
            &api,
            "ann",
            path,
            &json!({"body": {"text": "hello"}, "client_msg_id": "e-1"}),
        ))
        .await
        .expect(201);
    assert_eq!(edit["seq"], 3);
    assert_eq!(edit["conv"], "dm:ann:bob");
    let pushed = bob.message_on("users/bob/inbox").await.json;
    assert_eq!(pushed["kind"], "edit", "{pushed}");
    assert_eq!(pushed["ref"], 1);
    assert_eq!(pushed["seq"], 3);
    assert_eq!(pushed["body"], json!({"text": "hello"}));
    let original = stored(&api, "bob", "dm:ann:bob", 1).await;
    assert_eq!(original["body"], json!({"text": "hello"}));
    assert_eq!(original["edited_ts"], edit["ts"]);
    assert!(original.get("kind").is_none());
    // A retry of the edit is the edit.
    let again = api
        .call(patch(
            &api,
            "ann",
            path,
            &json!({"body": {"text": "hello"}, "client_msg_id": "e-1"}),
        ))
        .await
        .expect(200);
    assert_eq!(again["seq"], 3);

    // Not one's own: 403; an edit as the target: 400; no such seq: 404.
    api.call(patch(&api, "bob", path, &json!({"body": "mine now"})))
        .await
        .error(403, "not_sender");
    api.delete("bob", path).await.error(403, "not_sender");
    refused(
        &api,
        "ann",
        "/v1/conversations/dm:ann:bob/messages/3",
        400,
        "bad_request",
    )
    .await;
    refused(
        &api,
        "ann",
        "/v1/conversations/dm:ann:bob/messages/99",
        404,
        "not_found",
    )
    .await;
    refused(
        &api,
        "ann",
        "/v1/conversations/dm:ann:bob/messages/x",
        400,
        "bad_request",
    )
    .await;
    api.call(patch(&api, "ann", path, &json!({"text": "no body field"})))
        .await
        .error(400, "bad_request");
    api.call(patch(
        &api,
        "eve",
        "/v1/conversations/dm:ann:bob/messages/2",
        &json!({"body": "x"}),
    ))
    .await
    .error(403, "not_a_member");

    let recall = api.delete("ann", path).await.expect(201);
    assert_eq!(recall["seq"], 4);
    let pushed = bob.message_on("users/bob/inbox").await.json;
    assert_eq!(
        (pushed["kind"].clone(), pushed["ref"].clone()),
        (json!("recall"), json!(1))
    );
    assert!(pushed.get("body").is_none(), "{pushed}");
    let original = stored(&api, "bob", "dm:ann:bob", 1).await;
    assert_eq!(original["recalled"], true, "{original}");
    assert!(original.get("body").is_none(), "{original}");
    // The edit's body went too: nothing the message said stays readable.
    let edit3 = stored(&api, "bob", "dm:ann:bob", 3).await;
    assert_eq!(
        (edit3["kind"].clone(), edit3["recalled"].clone()),
        (json!("edit"), json!(true))
    );
    assert!(edit3.get("body").is_none(), "{edit3}");
    api.call(patch(&api, "ann", path, &json!({"body": "back"})))
        .await
        .error(409, "recalled");
    api.delete("ann", path).await.error(409, "recalled");

    // Sync shows the same: the recalled original, the edit and the recall.
    let convs = api.sync("bob", 100).await;
    let msgs = convs[0]["messages"].as_array().expect("messages");
    let seqs: Vec<u64> = msgs
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert_eq!(msgs[0]["recalled"], true);
    assert_eq!(msgs[1]["body"], json!({"text": "second"}));
}

#[tokio::test]
async fn past_its_window_a_message_stays_as_it_is() {
    let server = Server::start_env(
        "",
        &[
            ("IMQTT_LIMITS__EDIT_WINDOW", "1s"),
            ("IMQTT_LIMITS__RECALL_WINDOW", "1s"),
        ],
    )
    .await;
    let api = Api::new(&server);
    api.send("ann", "bob", json!("old")).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let path = "/v1/conversations/dm:ann:bob/messages/1";
    api.call(patch(&api, "ann", path, &json!({"body": "new"})))
        .await
        .error(409, "window_passed");
    api.delete("ann", path).await.error(409, "window_passed");
    assert_eq!(stored(&api, "ann", "dm:ann:bob", 1).await["body"], "old");
}

#[tokio::test]
async fn a_groups_owner_and_admins_recall_any_message_at_any_time() {
    let server = Server::start_env("", &[("IMQTT_LIMITS__RECALL_WINDOW", "1s")]).await;
    let api = Api::new(&server);
    api.group("own", "team", &["adm", "mem", "oth"]).await;
    api.put(
        "own",
        "/v1/groups/team/members/adm",
        &json!({"role": "admin"}),
    )
    .await
    .expect(204);
    for i in 0..3 {
        api.post("mem", "/v1/messages", &json!({"group": "team", "body": i}))
            .await
            .expect(201);
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let path = |seq: u64| format!("/v1/conversations/group:team/messages/{seq}");
    // Past the window the sender itself may not, nor a plain member.
    api.delete("mem", &path(1))
        .await
        .error(409, "window_passed");
    api.delete("oth", &path(1)).await.error(403, "not_sender");
    api.delete("out", &path(1)).await.error(403, "not_a_member");
    // Editing stays the sender's alone.
    api.call(patch(&api, "own", &path(1), &json!({"body": "x"})))
        .await
        .error(403, "not_sender");
    let by_owner = api.delete("own", &path(1)).await.expect(201);
    let by_admin = api.delete("adm", &path(2)).await.expect(201);
    assert!(by_admin["seq"].as_u64() > by_owner["seq"].as_u64());
    for seq in [1, 2] {
        assert_eq!(
            stored(&api, "oth", "group:team", seq).await["recalled"],
            true
        );
    }
    assert_eq!(stored(&api, "oth", "group:team", 3).await["body"], 2);
}
