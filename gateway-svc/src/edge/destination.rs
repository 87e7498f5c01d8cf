//! Where a request goes, decided once, in the server loop, from its normalized path: one of the
//! gateway's own paths, a business route, or neither (answered as the tutorial's express app
//! did). Every later step — session resolution, the handler, forwarding, the metrics label, the
//! span's name — reads this decision; none looks at the path again to decide.
//!
//! The gateway's own paths are listed here and nowhere else: the routes file and the login
//! path are checked against them, the metrics count by them, the dispatcher serves them.
use std::sync::Arc;

use crate::{
    apps::LoginRule,
    business::route_table::{Business, RouteTable},
    wafer,
};

/// The gateway's own paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Own {
    /// wafer's login (`WEAPP_LOGIN_PATH`, `/login` by default).
    Login,
    /// The user object, as the tutorial's express app mounted it (any case, and below it).
    Me,
    Logout,
    /// The tutorial's WebSocket.
    Ws,
    /// The phone number behind a getPhoneNumber code.
    Phone,
    /// nginx's `auth_request`: 200 with the identity headers, 401 with wafer's body.
    Auth,
    /// The keys that verify identity assertions.
    Jwks,
    Healthz,
    Readyz,
    /// WeChat's message push: `/wechat/push` for the default app, `/wechat/push/{appid}` for
    /// each app (session-svc holds the Token and decides).
    WeChatPush,
}

/// Where WeChat posts an app's events.
pub const WECHAT_PUSH: &str = "/wechat/push";

impl Own {
    pub const ALL: [Self; 10] = [
        Self::Login,
        Self::Me,
        Self::Logout,
        Self::Ws,
        Self::Phone,
        Self::Auth,
        Self::Jwks,
        Self::Healthz,
        Self::Readyz,
        Self::WeChatPush,
    ];

    /// Its path; the login path is a setting (`None`).
    pub const fn fixed_path(self) -> Option<&'static str> {
        Some(match self {
            Self::Login => return None,
            Self::Me => "/me",
            Self::Logout => "/logout",
            Self::Ws => "/ws",
            Self::Phone => "/phone-number",
            Self::Auth => "/_weapp/auth",
            Self::Jwks => "/.well-known/jwks.json",
            Self::Healthz => "/healthz",
            Self::Readyz => "/readyz",
            Self::WeChatPush => WECHAT_PUSH,
        })
    }

    /// Its place in [`Own::ALL`] (the variants are declared in that order): the index of its
    /// handler and of its metrics label.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Whether the request's session is resolved before the handler runs (the tutorial's
    /// session middleware ran in front of every route but login and the probes).
    pub const fn takes_session(self) -> bool {
        matches!(self, Self::Me | Self::Logout | Self::Phone)
    }
}

/// The paths the gateway serves itself, for the checks of the routes file and the login path.
pub fn fixed_paths() -> impl Iterator<Item = &'static str> {
    Own::ALL.into_iter().filter_map(Own::fixed_path)
}

/// Where one request goes.
#[derive(Clone, Debug)]
pub enum Destination {
    Own(Own),
    Business(Arc<Business>),
    /// Nothing the gateway serves: session resolved, then "Response from express".
    Other,
}

impl Destination {
    /// Whether the request's session is resolved before it is served.
    pub fn takes_session(&self) -> bool {
        match self {
            Self::Own(own) => own.takes_session(),
            Self::Business(_) | Self::Other => true,
        }
    }

    /// An index for the request's route template: the own paths, then the business routes,
    /// then everything else (`Routing::templates` in the same order).
    pub fn label(&self, routes: usize) -> usize {
        match self {
            Self::Own(own) => own.index(),
            Self::Business(business) => Own::ALL.len() + business.index,
            Self::Other => Own::ALL.len() + routes,
        }
    }
}

/// The gateway's routing: its own paths, the business routes and the rules of which app a
/// login is for. Built at start-up and again by a reload of the routes file (`SIGHUP`):
/// requests take the one in force when they arrive ([`LiveRouting`]).
#[derive(Debug)]
pub struct Routing {
    login_path: Arc<str>,
    business: Vec<Arc<Business>>,
    logins: Arc<[LoginRule]>,
}

/// The routing in force, replaced whole by a reload.
pub type LiveRouting = Arc<arc_swap::ArcSwap<Routing>>;

/// The template of requests that are neither own paths nor business routes.
pub const OTHER: &str = "other";

impl Routing {
    /// `table`'s routes were checked against the own paths with the settings.
    pub fn new(login_path: &str, table: Option<&RouteTable>) -> Self {
        let business = table
            .into_iter()
            .flat_map(RouteTable::routes)
            .enumerate()
            .map(|(index, route)| Arc::new(Business::new(route.clone(), index)))
            .collect();
        Self {
            login_path: login_path.into(),
            business,
            logins: table.map(|t| t.logins().clone()).unwrap_or_default(),
        }
    }

    /// The operator's rules of which app a login is for.
    pub fn login_rules(&self) -> &[LoginRule] {
        &self.logins
    }

    /// Where a request for `path` (normalized) goes.
    pub fn decide(&self, path: &str) -> Destination {
        if path == &*self.login_path
            || self
                .logins
                .iter()
                .any(|rule| rule.path.as_deref() == Some(path))
        {
            return Destination::Own(Own::Login);
        }
        if wafer::is_me(path) {
            return Destination::Own(Own::Me);
        }
        if let Some(own) = Own::ALL.into_iter().find(|o| o.fixed_path() == Some(path)) {
            return Destination::Own(own);
        }
        if path
            .strip_prefix(WECHAT_PUSH)
            .is_some_and(|rest| rest.starts_with('/'))
        {
            return Destination::Own(Own::WeChatPush);
        }
        match self.business.iter().find(|b| b.route.takes(path)) {
            Some(business) => Destination::Business(business.clone()),
            None => Destination::Other,
        }
    }

    pub fn login_path(&self) -> &str {
        &self.login_path
    }

    /// Every route template, in label order (`Destination::label`): what requests are counted
    /// and spans named by.
    pub fn templates(&self) -> Vec<String> {
        Own::ALL
            .into_iter()
            .map(|own| own.fixed_path().unwrap_or(&self.login_path).to_owned())
            .chain(self.business.iter().map(|b| b.route.prefix.clone()))
            .chain([OTHER.to_owned()])
            .collect()
    }

    pub fn business_routes(&self) -> usize {
        self.business.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_paths_are_declared_in_their_index_order() {
        for (index, own) in Own::ALL.into_iter().enumerate() {
            assert_eq!(own.index(), index, "{own:?}");
        }
    }

    #[test]
    fn each_path_has_one_destination_and_one_label() {
        let table = RouteTable::parse(
            "[[route]]\nprefix = \"/api/\"\nupstream = \"http://127.0.0.1:1\"\nsession = \"required\"\n",
        )
        .unwrap();
        let routing = Routing::new("/weapp/login", Some(&table));
        let templates = routing.templates();
        let label =
            |path: &str| templates[routing.decide(path).label(routing.business_routes())].clone();
        assert_eq!(label("/weapp/login"), "/weapp/login");
        assert_eq!(label("/ME/x"), "/me");
        assert_eq!(label("/ws"), "/ws");
        assert_eq!(label("/_weapp/auth"), "/_weapp/auth");
        assert_eq!(label("/api/orders"), "/api/");
        assert_eq!(label("/API/x"), "/api/");
        assert_eq!(label("/apix"), OTHER);
        assert_eq!(
            label("/login"),
            OTHER,
            "the default login path is not this gateway's"
        );
        assert_eq!(label("/anything"), OTHER);
        assert_eq!(label("/wechat/push"), "/wechat/push");
        assert_eq!(label("/wechat/push/wx0123"), "/wechat/push");
        assert_eq!(label("/wechat/pushy"), OTHER);
        assert!(!routing.decide("/wechat/push/wx0123").takes_session());
        assert!(matches!(routing.decide("/api/x"), Destination::Business(_)));
        assert!(routing.decide("/api/x").takes_session());
        assert!(!routing.decide("/healthz").takes_session());
        assert_eq!(templates.len(), Own::ALL.len() + 2);
    }
}
