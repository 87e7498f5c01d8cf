//! The WeChat sandbox's server APIs against WeChat's documented behaviour, spoken to over HTTP
//! as any client of WeChat would: the facts session-svc's tests rely on hold in the sandbox
//! itself (a JSON body for stable_token, its normal mode answering the current token, the
//! separate `cgi-bin/token` family, forced refresh limits, checksession's signature rule).
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use weapp_tests::{WeChat, wechat_sandbox::MintRequest};

async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    http.post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn get(http: &reqwest::Client, url: String) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn access_tokens_follow_wechats_rules() {
    let wechat = WeChat::start().await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", wechat.addr);
    let stable = |force: bool, secret: &str| {
        json!({ "grant_type": "client_credential", "appid": wechat.app_id, "secret": secret,
                "force_refresh": force })
    };
    // A form-encoded body is not read: 41002.
    let form: Value = http
        .post(format!("{base}/cgi-bin/stable_token"))
        .form(&[
            ("grant_type", "client_credential"),
            ("appid", &wechat.app_id),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(form["errcode"], 41002, "{form}");
    let wrong = post(
        &http,
        format!("{base}/cgi-bin/stable_token"),
        stable(false, "nope"),
    )
    .await;
    assert_eq!(wrong["errcode"], 40125, "{wrong}");

    // Normal mode: the current token, with its remaining life, however often it is asked.
    let first = post(
        &http,
        format!("{base}/cgi-bin/stable_token"),
        stable(false, &wechat.app_secret),
    )
    .await;
    let again = post(
        &http,
        format!("{base}/cgi-bin/stable_token"),
        stable(false, &wechat.app_secret),
    )
    .await;
    assert_eq!(first["access_token"], again["access_token"]);
    assert!(again["expires_in"].as_u64().unwrap() <= 7200);

    // cgi-bin/token is another family: a new token each call, the previous one dead.
    let token_url = format!(
        "{base}/cgi-bin/token?grant_type=client_credential&appid={}&secret={}",
        wechat.app_id, wechat.app_secret
    );
    let plain_1 = get(&http, token_url.clone()).await;
    let plain_2 = get(&http, token_url).await;
    assert_ne!(plain_1["access_token"], plain_2["access_token"]);
    assert_ne!(plain_1["access_token"], first["access_token"]);
    let phone_with = |token: &Value| {
        format!(
            "{base}/wxa/business/getuserphonenumber?access_token={}",
            token.as_str().unwrap()
        )
    };
    let code = wechat
        .sandbox
        .apis()
        .mint_phone_code(Default::default())
        .code;
    let dead = post(
        &http,
        phone_with(&plain_1["access_token"]),
        json!({ "code": code }),
    )
    .await;
    assert_eq!(dead["errcode"], 40001, "{dead}");

    // Forced refresh: a new token at once, the old one still good (five minutes' grace);
    // the next within 30 s is refused.
    let forced = post(
        &http,
        format!("{base}/cgi-bin/stable_token"),
        stable(true, &wechat.app_secret),
    )
    .await;
    assert_ne!(forced["access_token"], first["access_token"]);
    let grace = post(
        &http,
        phone_with(&first["access_token"]),
        json!({ "code": code }),
    )
    .await;
    assert_eq!(grace["errcode"], 0, "the old token still works: {grace}");
    assert!(grace["phone_info"]["purePhoneNumber"].is_string());
    let too_soon = post(
        &http,
        format!("{base}/cgi-bin/stable_token"),
        stable(true, &wechat.app_secret),
    )
    .await;
    assert_eq!(too_soon["errcode"], 45011, "{too_soon}");
    let used = post(
        &http,
        phone_with(&forced["access_token"]),
        json!({ "code": code }),
    )
    .await;
    assert_eq!(used["errcode"], 40029, "a phone code is good once: {used}");
    let stats = wechat.sandbox.apis().token_stats();
    assert_eq!(
        (stats.stable_token, stats.stable_token_forced, stats.token),
        (6, 2, 2)
    );
}

#[tokio::test]
async fn checksession_signs_the_empty_string_with_the_base64_text() {
    let wechat = WeChat::start().await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", wechat.addr);
    let minted = wechat.mint(MintRequest::default());
    // The user's login at WeChat: the code exchange makes its session_key the valid one.
    let exchanged = get(
        &http,
        format!(
            "{base}/sns/jscode2session?appid={}&secret={}&js_code={}&grant_type=authorization_code",
            wechat.app_id, wechat.app_secret, minted.code
        ),
    )
    .await;
    let key = exchanged["session_key"].as_str().unwrap().to_owned();
    let token = post(
        &http,
        format!("{base}/cgi-bin/stable_token"),
        json!({ "grant_type": "client_credential", "appid": wechat.app_id,
                "secret": wechat.app_secret }),
    )
    .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let sign = |key_bytes: &[u8]| {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key_bytes).unwrap();
        mac.update(b"");
        hex::encode(mac.finalize().into_bytes())
    };
    let check = |signature: String, method: &str| {
        format!(
            "{base}/wxa/checksession?access_token={token}&openid={}&signature={signature}&sig_method={method}",
            minted.openid
        )
    };
    let ok = get(&http, check(sign(key.as_bytes()), "hmac_sha256")).await;
    assert_eq!(ok["errcode"], 0, "{ok}");
    // Keyed with the 16 decoded bytes instead (the mistake two SDKs made): refused.
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .unwrap();
    let wrong = get(&http, check(sign(&decoded), "hmac_sha256")).await;
    assert_eq!(wrong["errcode"], 87009, "{wrong}");
    let method = get(&http, check(sign(key.as_bytes()), "sha256")).await;
    assert_eq!(method["errcode"], 87008, "{method}");

    // resetusersessionkey hands out a new key; the old one no longer checks.
    let reset = get(
        &http,
        check(sign(key.as_bytes()), "hmac_sha256")
            .replace("/wxa/checksession", "/wxa/resetusersessionkey"),
    )
    .await;
    let fresh = reset["session_key"].as_str().unwrap();
    assert_ne!(fresh, key);
    let old = get(&http, check(sign(key.as_bytes()), "hmac_sha256")).await;
    assert_eq!(old["errcode"], 87009);
    let new = get(&http, check(sign(fresh.as_bytes()), "hmac_sha256")).await;
    assert_eq!(new["errcode"], 0);
}
