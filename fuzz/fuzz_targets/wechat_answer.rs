//! WeChat's `jscode2session` answer, whatever bytes come back: a session or an error, never a
//! panic. A session always has an openid; an error about the answer's shape never quotes the
//! answer (it may hold a session_key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weapp_wire::wechat_answer::{AnswerError, parse_answer};

fuzz_target!(|body: &[u8]| {
    match parse_answer(body) {
        Ok(session) => assert!(!session.open_id.is_empty()),
        Err(AnswerError::Malformed(message)) => {
            assert!(
                !message.contains('"') && !message.contains('`'),
                "quotes the body: {message}"
            );
        }
        Err(_) => {}
    }
});
