//! The body of one WeChat message push, in either format the console can be switched to (the
//! switch takes effect at once, so both are always accepted): XML — read with no DTD, no
//! processing instruction and no entity but XML's own five and character references, so no
//! billion laughs and no external entity — or JSON. Both become WeChat's JSON shape: the
//! fields of `<xml>` as an object, nested elements as objects, repeated ones as arrays,
//! `CreateTime` and `MsgId` as numbers (a `MsgId` exceeds 2^53: kept exact, as a u64).
use quick_xml::{Reader, events::Event};
use serde_json::{Map, Number, Value};

/// Largest body read.
pub const MAX_BODY: usize = 1 << 20;
/// Deepest nesting read (WeChat's events nest two levels at most).
const MAX_DEPTH: usize = 8;
/// Most fields read.
const MAX_FIELDS: usize = 1_000;
/// Fields WeChat's JSON format gives as numbers.
const NUMERIC: [&str; 3] = ["CreateTime", "MsgId", "MsgID"];

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the body is empty, or over {MAX_BODY} bytes")]
    Size,
    #[error("the body is neither XML nor a JSON object")]
    Format,
    #[error("the XML is not WeChat's <xml> document: {0}")]
    Xml(String),
    #[error("the XML declares a DTD or a processing instruction: refused")]
    Dtd,
    #[error("the JSON is not an object: {0}")]
    Json(String),
    #[error("more than {MAX_FIELDS} fields or {MAX_DEPTH} levels")]
    TooBig,
}

/// A push body as WeChat's JSON object.
pub fn parse(body: &[u8]) -> Result<Map<String, Value>, EventError> {
    if body.is_empty() || body.len() > MAX_BODY {
        return Err(EventError::Size);
    }
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'<') => parse_xml(body),
        Some(b'{') => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(fields)) => Ok(fields),
            Ok(_) => Err(EventError::Json("not an object".into())),
            Err(e) => Err(EventError::Json(e.to_string())),
        },
        _ => Err(EventError::Format),
    }
}

/// What an event is known by, for WeChat's retries (three tries, the same event) and for the
/// team's upstream (its event id): its `MsgId` as a decimal string (MsgIds exceed 2^53, so
/// never a JSON number downstream), else `FromUserName:CreateTime:Event` (an event has no
/// MsgId; MsgIds are digits only, so the two never collide).
pub fn dedupe_key(fields: &Map<String, Value>) -> Option<String> {
    let text = |name: &str| match fields.get(name)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    if let Some(id) = text("MsgId").or_else(|| text("MsgID")) {
        return Some(id);
    }
    let from = text("FromUserName")?;
    let at = text("CreateTime")?;
    let what = text("Event")
        .or_else(|| text("MsgType"))
        .unwrap_or_default();
    Some(format!("{from}:{at}:{what}"))
}

/// One element being read: its name and what it holds so far.
struct Open {
    name: String,
    fields: Map<String, Value>,
    text: String,
    children: bool,
}

fn parse_xml(body: &[u8]) -> Result<Map<String, Value>, EventError> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(true);
    let mut buf = Vec::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Map<String, Value>> = None;
    let mut count = 0usize;
    let xml = |e: quick_xml::Error| EventError::Xml(e.to_string());
    loop {
        let event = reader.read_event_into(&mut buf).map_err(xml)?;
        match event {
            Event::Decl(_) | Event::Comment(_) => {}
            Event::DocType(_) | Event::PI(_) => return Err(EventError::Dtd),
            Event::Start(start) => {
                if root.is_some() {
                    return Err(EventError::Xml("content after </xml>".into()));
                }
                let name = String::from_utf8(start.name().as_ref().to_vec())
                    .map_err(|_| EventError::Xml("a name that is not UTF-8".into()))?;
                if stack.is_empty() && name != "xml" {
                    return Err(EventError::Xml(format!("the root is <{name}>, not <xml>")));
                }
                count += 1;
                if stack.len() >= MAX_DEPTH || count > MAX_FIELDS {
                    return Err(EventError::TooBig);
                }
                if let Some(parent) = stack.last_mut() {
                    parent.children = true;
                }
                stack.push(Open {
                    name,
                    fields: Map::new(),
                    text: String::new(),
                    children: false,
                });
            }
            Event::Empty(empty) => {
                let name = String::from_utf8(empty.name().as_ref().to_vec())
                    .map_err(|_| EventError::Xml("a name that is not UTF-8".into()))?;
                let parent = stack
                    .last_mut()
                    .ok_or_else(|| EventError::Xml("no <xml> root".into()))?;
                parent.children = true;
                add(&mut parent.fields, name, Value::String(String::new()));
            }
            Event::Text(text) => {
                let open = stack
                    .last_mut()
                    .ok_or_else(|| EventError::Xml("text outside <xml>".into()))?;
                open.text.push_str(
                    &text
                        .unescape()
                        .map_err(|e| EventError::Xml(e.to_string()))?,
                );
            }
            Event::CData(data) => {
                let open = stack
                    .last_mut()
                    .ok_or_else(|| EventError::Xml("CDATA outside <xml>".into()))?;
                let data = std::str::from_utf8(&data)
                    .map_err(|_| EventError::Xml("CDATA that is not UTF-8".into()))?;
                open.text.push_str(data);
            }
            Event::End(_) => {
                let done = stack
                    .pop()
                    .ok_or_else(|| EventError::Xml("an end without a start".into()))?;
                let value = match done.children {
                    true => Value::Object(done.fields),
                    false => scalar(&done.name, done.text),
                };
                match stack.last_mut() {
                    Some(parent) => add(&mut parent.fields, done.name, value),
                    None => match value {
                        Value::Object(fields) => root = Some(fields),
                        _ => root = Some(Map::new()),
                    },
                }
            }
            Event::Eof => break,
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err(EventError::Xml(
            "the document ends inside an element".into(),
        ));
    }
    root.ok_or_else(|| EventError::Xml("no <xml> root".into()))
}

/// A leaf's value: a number for the fields WeChat's JSON gives as numbers, else the text.
fn scalar(name: &str, text: String) -> Value {
    let canonical = !text.is_empty()
        && text.len() <= 20
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    match (NUMERIC.contains(&name) && canonical, text.parse::<u64>()) {
        (true, Ok(n)) => Value::Number(Number::from(n)),
        _ => Value::String(text),
    }
}

/// Adds a field; a name seen again becomes an array of its values, in order.
fn add(fields: &mut Map<String, Value>, name: String, value: Value) {
    match fields.get_mut(&name) {
        None => {
            fields.insert(name, value);
        }
        Some(Value::Array(items)) => items.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn xml_and_json_give_the_same_object() {
        let xml = br#"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o-user]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[a < b & "c"]]></Content><MsgId>23456789012345678901</MsgId></xml>"#;
        let from_xml = parse(xml);
        // A MsgId past u64 stays a string rather than losing digits.
        assert_eq!(from_xml.as_ref().unwrap()["MsgId"], "23456789012345678901");
        let xml = br#"<?xml version="1.0"?>
            <xml>
              <ToUserName>gh_1</ToUserName><FromUserName>o-user</FromUserName>
              <CreateTime>1700000000</CreateTime><MsgType>text</MsgType>
              <Content>a &lt; b &amp; &#34;c&#34;</Content><MsgId>9223372036854775809</MsgId>
            </xml>"#;
        let from_xml = parse(xml).unwrap();
        let json = br#"{"ToUserName":"gh_1","FromUserName":"o-user","CreateTime":1700000000,"MsgType":"text","Content":"a < b & \"c\"","MsgId":9223372036854775809}"#;
        let from_json = parse(json).unwrap();
        assert_eq!(from_xml, from_json);
        assert_eq!(
            from_xml["MsgId"],
            json!(9_223_372_036_854_775_809u64),
            "exact past 2^53"
        );
        assert_eq!(
            dedupe_key(&from_xml).as_deref(),
            Some("9223372036854775809")
        );
    }

    #[test]
    fn events_nest_and_repeat_and_are_known_by_sender_time_and_event() {
        let xml = br#"<xml><ToUserName>gh_1</ToUserName><FromUserName>o-user</FromUserName><CreateTime>1700000001</CreateTime><MsgType>event</MsgType><Event>subscribe_msg_popup_event</Event><SubscribeMsgPopupEvent><List><TemplateId>t1</TemplateId><SubscribeStatusString>accept</SubscribeStatusString><PopupScene>0</PopupScene></List><List><TemplateId>t2</TemplateId><SubscribeStatusString>reject</SubscribeStatusString><PopupScene>0</PopupScene></List></SubscribeMsgPopupEvent><Empty/></xml>"#;
        let fields = parse(xml).unwrap();
        let list = &fields["SubscribeMsgPopupEvent"]["List"];
        assert_eq!(list[1]["TemplateId"], "t2");
        assert_eq!(
            list[0]["PopupScene"], "0",
            "only WeChat's numeric fields become numbers"
        );
        assert_eq!(fields["Empty"], "");
        assert_eq!(
            dedupe_key(&fields).as_deref(),
            Some("o-user:1700000001:subscribe_msg_popup_event")
        );
    }

    #[test]
    fn dtds_entities_and_everything_else_are_refused() {
        let billion_laughs = br#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><xml><A>&lol2;</A></xml>"#;
        assert_eq!(parse(billion_laughs), Err(EventError::Dtd));
        let external =
            br#"<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><A>&xxe;</A></xml>"#;
        assert_eq!(parse(external), Err(EventError::Dtd));
        assert!(matches!(
            parse(b"<xml><A>&xxe;</A></xml>"),
            Err(EventError::Xml(_))
        ));
        assert_eq!(parse(b"<?php echo 1; ?><xml/>"), Err(EventError::Dtd));
        for bad in [
            &b""[..],
            b"   ",
            b"plain text",
            b"[1,2]",
            b"<root><A>1</A></root>",
            b"<xml><A>1</A>",
            b"<xml><A>1</B></xml>",
            b"<xml></xml><xml></xml>",
            b"{\"a\":",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let deep = format!("<xml>{}{}</xml>", "<a>".repeat(20), "</a>".repeat(20));
        assert_eq!(parse(deep.as_bytes()), Err(EventError::TooBig));
        assert_eq!(parse(&vec![b' '; MAX_BODY + 1]), Err(EventError::Size));
    }
}
