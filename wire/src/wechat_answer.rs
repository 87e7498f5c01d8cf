//! WeChat's answer to `jscode2session`: a session (openid, session_key, maybe unionid) or an
//! errcode. WeChat sends it as `text/plain`, so the body is read whatever its content type.
use secrecy::SecretString;
use serde::Deserialize;

/// A successful exchange. `session_key` stays inside session-svc.
pub struct CodeSession {
    pub open_id: String,
    pub union_id: Option<String>,
    pub session_key: SecretString,
}

impl std::fmt::Debug for CodeSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeSession")
            .field("union_id", &self.union_id.is_some())
            .finish_non_exhaustive()
    }
}

/// Why an answer is not a session.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// WeChat answered with an errcode.
    #[error("WeChat errcode {errcode}: {errmsg}")]
    Refused { errcode: i64, errmsg: String },
    #[error("WeChat's answer is not in its documented format: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
struct Answer {
    openid: Option<String>,
    session_key: Option<String>,
    unionid: Option<String>,
    errcode: Option<i64>,
    errmsg: Option<String>,
}

/// Reads a jscode2session answer. WeChat sends `text/plain`, so the body is parsed whatever
/// its content type says.
pub fn parse_answer(body: &[u8]) -> Result<CodeSession, AnswerError> {
    // Only where it broke, not serde's message: that quotes values from the body, and the
    // body of a half-valid answer can hold a session_key.
    let answer: Answer = serde_json::from_slice(body).map_err(|e| {
        AnswerError::Malformed(format!(
            "not the expected JSON ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    if let Some(errcode) = answer.errcode.filter(|c| *c != 0) {
        return Err(AnswerError::Refused {
            errcode,
            errmsg: answer.errmsg.unwrap_or_default(),
        });
    }
    match (answer.openid, answer.session_key) {
        (Some(open_id), Some(session_key)) if !open_id.is_empty() && !session_key.is_empty() => {
            Ok(CodeSession {
                open_id,
                union_id: answer.unionid.filter(|u| !u.is_empty()),
                session_key: SecretString::from(session_key),
            })
        }
        _ => Err(AnswerError::Malformed(
            "openid or session_key missing".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;

    #[test]
    fn parses_success_and_errors() {
        let ok = parse_answer(br#"{"openid":"o1","session_key":"a2V5","unionid":"u1"}"#).unwrap();
        assert_eq!(ok.open_id, "o1");
        assert_eq!(ok.union_id.as_deref(), Some("u1"));
        assert_eq!(ok.session_key.expose_secret(), "a2V5");
        assert!(!format!("{ok:?}").contains("a2V5"));

        let err =
            parse_answer(br#"{"errcode":40029,"errmsg":"invalid code, rid: 1"}"#).unwrap_err();
        assert_eq!(
            err,
            AnswerError::Refused {
                errcode: 40029,
                errmsg: "invalid code, rid: 1".into()
            }
        );
        // errcode 0 with the fields present is a success (WeChat sometimes includes it).
        assert!(parse_answer(br#"{"errcode":0,"openid":"o","session_key":"k"}"#).is_ok());
    }

    #[test]
    fn malformed_answers_are_refused() {
        for body in [
            &b"<html>"[..],
            b"{\"openid\":\"o\",\"sess",
            b"{}",
            b"{\"openid\":\"o\"}",
            b"[]",
            b"",
        ] {
            assert!(
                matches!(parse_answer(body), Err(AnswerError::Malformed(_))),
                "{body:?}"
            );
        }
    }
}
