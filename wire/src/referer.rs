//! The `Referer` WeChat's runtime writes on every `wx.request` of a mini-program:
//! `https://servicewechat.com/{appid}/{version}/page-frame.html`, where `{version}` is the
//! release number (`0` in the developer tools' preview, `devtools` in its simulator). Mini-
//! program code cannot set it, so the gateway may take the app from it when no operator rule
//! decides; only this exact form counts, anything else says nothing.

/// Longest AppId read from a Referer (WeChat's are 18 characters).
const MAX_APP_ID: usize = 64;
/// Longest version segment read.
const MAX_VERSION: usize = 32;

const PREFIX: &str = "https://servicewechat.com/";
const SUFFIX: &str = "/page-frame.html";

/// The AppId of a Referer in WeChat's exact form; `None` for anything else.
pub fn mini_program_app_id(referer: &[u8]) -> Option<&str> {
    let referer = std::str::from_utf8(referer).ok()?;
    let rest = referer.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (app_id, version) = rest.split_once('/')?;
    let app_id_ok = !app_id.is_empty()
        && app_id.len() <= MAX_APP_ID
        && app_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let version_ok = !version.is_empty()
        && version.len() <= MAX_VERSION
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
    (app_id_ok && version_ok).then_some(app_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wechats_exact_form_names_an_app() {
        for (referer, app) in [
            (
                "https://servicewechat.com/wx1234567890abcdef/3/page-frame.html",
                Some("wx1234567890abcdef"),
            ),
            (
                "https://servicewechat.com/wxabc/devtools/page-frame.html",
                Some("wxabc"),
            ),
            (
                "https://servicewechat.com/wxabc/0/page-frame.html",
                Some("wxabc"),
            ),
            // Anything else says nothing: another host, scheme, path, a query, a fragment,
            // extra segments, a userinfo part, case changes, encodings, spaces.
            ("http://servicewechat.com/wxabc/1/page-frame.html", None),
            (
                "https://servicewechat.com.evil.com/wxabc/1/page-frame.html",
                None,
            ),
            (
                "https://evil.com/servicewechat.com/wxabc/1/page-frame.html",
                None,
            ),
            (
                "https://user@servicewechat.com/wxabc/1/page-frame.html",
                None,
            ),
            ("https://SERVICEWECHAT.COM/wxabc/1/page-frame.html", None),
            (
                "https://servicewechat.com/wxabc/1/page-frame.html?x=1",
                None,
            ),
            ("https://servicewechat.com/wxabc/1/page-frame.html#x", None),
            ("https://servicewechat.com/wxabc/1/2/page-frame.html", None),
            ("https://servicewechat.com/wx%61bc/1/page-frame.html", None),
            ("https://servicewechat.com//1/page-frame.html", None),
            ("https://servicewechat.com/wxabc//page-frame.html", None),
            ("https://servicewechat.com/wx abc/1/page-frame.html", None),
            ("https://servicewechat.com/wxabc/1/page-frame.htm", None),
            ("https://servicewechat.com/wxabc/1/page-frame.html ", None),
            ("", None),
        ] {
            assert_eq!(mini_program_app_id(referer.as_bytes()), app, "{referer:?}");
        }
        assert_eq!(
            mini_program_app_id(b"https://servicewechat.com/\xff/1/page-frame.html"),
            None
        );
        let long = format!(
            "https://servicewechat.com/{}/1/page-frame.html",
            "w".repeat(65)
        );
        assert_eq!(mini_program_app_id(long.as_bytes()), None);
    }
}
