//! The routing decision, host-independent: a request view in, a [`Decision`]
//! (data) out. The glue strips owned headers before building the view and
//! applies the decision afterwards.

use crate::baggage::Baggage;
use crate::config::{
    is_lane_value, Action, ClaimsSource, Config, Match, PathRewrite, Redirect, Rule, Split,
    StickyKey,
};
use crate::hash::{bucket, percent_to_buckets};
use crate::matcher::NamedMatch;
use meshwasm_shared::host_headers::Header;
use meshwasm_shared::{claims, headers, host_pattern};
use serde_json::Value;

/// What the filter sees of a request (owned headers already removed).
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// `:path`, with query string.
    pub path: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
    pub headers: &'a [Header<'a>],
    /// Verified claims (from the authz filter), if any.
    pub claims: Option<&'a Value>,
}

/// Where the request's lane came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneSource {
    Rule,
    Baggage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    pub value: String,
    pub source: LaneSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// The rule that matched.
    pub rule: Option<String>,
    /// The split variant chosen.
    pub variant: Option<String>,
    pub lane: Option<Lane>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Forward(Mutations),
    Redirect {
        status: u16,
        location: String,
    },
    Respond {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
}

impl Default for Outcome {
    fn default() -> Self {
        Self::Forward(Mutations::default())
    }
}

/// Changes to the forwarded request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mutations {
    pub remove_headers: Vec<String>,
    /// Applied after removals, replacing any existing value.
    pub set_headers: Vec<(String, String)>,
    pub path: Option<String>,
    pub authority: Option<String>,
    /// New `baggage` header: `Some("")` removes it.
    pub baggage: Option<String>,
}

impl Mutations {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The configuration, ready to decide.
#[derive(Debug, Clone)]
pub struct Router {
    config: Config,
    owned_headers: Vec<String>,
    uses_claims: bool,
}

impl Router {
    pub fn new(config: Config) -> Self {
        let owned_headers = config.effective_owned_headers();
        let uses_claims = config.rules.iter().any(|rule| {
            !rule.matches.claims.is_empty()
                || matches!(
                    rule.action.split.as_ref().map(|s| &s.key),
                    Some(StickyKey::Claim(_))
                )
                || matches!(
                    rule.action.rollout.as_ref().map(|r| &r.key),
                    Some(StickyKey::Claim(_))
                )
        });
        Self {
            config,
            owned_headers,
            uses_claims,
        }
    }

    /// Headers to strip from every incoming request (lower-case).
    pub fn owned_headers(&self) -> &[String] {
        &self.owned_headers
    }

    /// Whether any rule reads claims (so the glue fetches them).
    pub fn uses_claims(&self) -> bool {
        self.uses_claims
    }

    pub fn claims_source(&self) -> &ClaimsSource {
        &self.config.claims
    }

    pub fn debug_header(&self) -> Option<&str> {
        self.config.debug_header.as_deref()
    }

    /// The lane values a metric label may carry; others become `other`.
    pub fn is_known_lane(&self, lane: &str) -> bool {
        let lanes = &self.config.lane;
        if !lanes.allowed.is_empty() {
            return lanes.allowed.iter().any(|allowed| allowed == lane);
        }
        self.config.rules.iter().any(|rule| {
            rule.action.lane.as_deref() == Some(lane)
                || rule.action.split.as_ref().is_some_and(|split| {
                    split
                        .variants
                        .iter()
                        .any(|variant| variant.lane.as_deref() == Some(lane))
                })
        })
    }

    /// Evaluates the rules in order; the first that matches (and whose
    /// rollout includes the request) decides.
    pub fn decide(&self, request: &RequestView<'_>) -> Decision {
        let incoming_header = combined(request.headers, "baggage");
        let mut baggage = Baggage::parse(incoming_header.as_deref().unwrap_or(""));
        let lane_config = &self.config.lane;
        let mut baggage_changed = false;
        if !lane_config.accept_baggage {
            baggage_changed |= baggage.remove(&lane_config.baggage_key);
        }
        let inherited = baggage
            .get(&lane_config.baggage_key)
            .filter(|lane| self.lane_allowed(lane))
            .map(|lane| Lane {
                value: lane.to_owned(),
                source: LaneSource::Baggage,
            });

        let context = Context {
            request,
            baggage: &baggage,
        };
        let mut decision = self
            .config
            .rules
            .iter()
            .find_map(|rule| context.apply(rule))
            .unwrap_or_default();
        if decision.lane.is_none() {
            decision.lane = inherited;
        }

        if let Outcome::Forward(mutations) = &mut decision.outcome {
            if let Some(lane) = &decision.lane {
                mutations
                    .set_headers
                    .push((lane_config.header.clone(), lane.value.clone()));
                if lane_config.propagate
                    && baggage.get(&lane_config.baggage_key) != Some(&lane.value)
                {
                    baggage.set(&lane_config.baggage_key, &lane.value);
                    baggage_changed = true;
                }
            }
            if baggage_changed {
                mutations.baggage = Some(baggage.to_header());
            }
        }
        decision
    }

    fn lane_allowed(&self, lane: &str) -> bool {
        let allowed = &self.config.lane.allowed;
        is_lane_value(lane) && (allowed.is_empty() || allowed.iter().any(|a| a == lane))
    }
}

struct Context<'a> {
    request: &'a RequestView<'a>,
    baggage: &'a Baggage,
}

impl Context<'_> {
    /// The decision of `rule`, or `None` when it does not apply.
    fn apply(&self, rule: &Rule) -> Option<Decision> {
        if !self.matches(&rule.matches) {
            return None;
        }
        let action = &rule.action;
        if let Some(rollout) = &action.rollout {
            let seed = format!("{}/rollout", rollout.seed.as_deref().unwrap_or(&rule.name));
            let key = self.sticky_key(&rollout.key)?;
            if bucket(&seed, &key) >= percent_to_buckets(rollout.percent) {
                return None;
            }
        }
        let mut decision = Decision {
            rule: Some(rule.name.clone()),
            ..Decision::default()
        };
        if let Some(redirect) = &action.redirect {
            decision.outcome = Outcome::Redirect {
                status: redirect.status,
                location: self.location(redirect),
            };
            return Some(decision);
        }
        if let Some(direct) = &action.direct_response {
            let mut headers = vec![("content-type".to_owned(), direct.content_type.clone())];
            headers.extend(direct.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
            decision.outcome = Outcome::Respond {
                status: direct.status,
                body: direct.body.clone(),
                headers,
            };
            return Some(decision);
        }
        decision.lane = action.lane.as_ref().map(|lane| Lane {
            value: lane.clone(),
            source: LaneSource::Rule,
        });
        let mut mutations = self.forward_mutations(action);
        if let Some(split) = &action.split {
            if let Some(variant) = self.choose_variant(split, &rule.name) {
                decision.variant = Some(variant.label().to_owned());
                if let Some(lane) = &variant.lane {
                    decision.lane = Some(Lane {
                        value: lane.clone(),
                        source: LaneSource::Rule,
                    });
                }
                mutations.set_headers.extend(
                    variant
                        .set_headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
            }
        }
        decision.outcome = Outcome::Forward(mutations);
        Some(decision)
    }

    fn forward_mutations(&self, action: &Action) -> Mutations {
        let (path, query) = headers::split_path(self.request.path);
        let path = action
            .path_rewrite
            .as_ref()
            .map(|rewrite| rewrite_path(rewrite, path))
            .filter(|new_path| new_path != path)
            .map(|new_path| match query {
                Some(query) => format!("{new_path}?{query}"),
                None => new_path,
            });
        Mutations {
            remove_headers: action.remove_headers.clone(),
            set_headers: action
                .set_headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            path,
            authority: action.authority.clone(),
            baggage: None,
        }
    }

    fn choose_variant<'s>(
        &self,
        split: &'s Split,
        rule_name: &str,
    ) -> Option<&'s crate::config::Variant> {
        let seed = split.seed.as_deref().unwrap_or(rule_name);
        let point = match self.sticky_key(&split.key) {
            Some(key) => bucket(seed, &key),
            None => {
                if let Some(name) = &split.missing_key_variant {
                    return split.variants.iter().find(|v| v.label() == name);
                }
                let request_id = headers::find(self.request.headers, "x-request-id").unwrap_or("");
                bucket(seed, request_id)
            }
        };
        let mut upper = 0;
        for variant in &split.variants {
            upper += percent_to_buckets(variant.weight);
            if point < upper {
                return Some(variant);
            }
        }
        // Weights sum to 100, so only rounding can reach this: take the last.
        split.variants.last()
    }

    fn sticky_key(&self, key: &StickyKey) -> Option<String> {
        let value = match key {
            StickyKey::Header(name) => headers::find(self.request.headers, name).map(str::to_owned),
            StickyKey::Cookie(name) => self.cookie_values(name).next().map(str::to_owned),
            StickyKey::Claim(name) => self.claim_values(name).into_iter().next(),
        };
        value.filter(|value| !value.is_empty())
    }

    fn matches(&self, conditions: &Match) -> bool {
        let request = self.request;
        let (path, query) = headers::split_path(request.path);
        if let Some(pattern) = &conditions.path {
            if !pattern.matches(path) {
                return false;
            }
        }
        if let Some(regex) = &conditions.path_regex {
            if !regex.0.is_match(path) {
                return false;
            }
        }
        if !conditions.methods.is_empty()
            && !conditions
                .methods
                .iter()
                .any(|method| method.eq_ignore_ascii_case(request.method))
        {
            return false;
        }
        if !conditions.hosts.is_empty()
            && !conditions
                .hosts
                .iter()
                .any(|host| host.matches(request.authority))
        {
            return false;
        }
        let all = |matchers: &[NamedMatch], values: &dyn Fn(&str) -> Vec<String>| {
            matchers
                .iter()
                .all(|m| m.matches(values(&m.name).iter().map(String::as_str)))
        };
        all(&conditions.headers, &|name| {
            request
                .headers
                .iter()
                .filter(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.clone().into_owned())
                .collect()
        }) && all(&conditions.query_params, &|name| {
            query
                .and_then(|query| headers::query_param(query, name))
                .map(|raw| crate::baggage::percent_decode(raw).unwrap_or_else(|| raw.to_owned()))
                .into_iter()
                .collect()
        }) && all(&conditions.cookies, &|name| {
            self.cookie_values(name).map(str::to_owned).collect()
        }) && all(&conditions.claims, &|name| self.claim_values(name))
            && all(&conditions.baggage, &|name| {
                self.baggage
                    .get(name)
                    .map(str::to_owned)
                    .into_iter()
                    .collect()
            })
    }

    fn cookie_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.request
            .headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case("cookie"))
            .filter_map(move |(_, value)| headers::cookie(value, name))
    }

    /// A claim's values as text ([`claims`]), arrays element by element.
    fn claim_values(&self, name: &str) -> Vec<String> {
        let Some(claim) = self
            .request
            .claims
            .and_then(|claims| claims::lookup(claims, name))
        else {
            return Vec::new();
        };
        match claim {
            Value::Array(items) => items.iter().filter_map(claims::scalar_text).collect(),
            other => claims::scalar_text(other).into_iter().collect(),
        }
    }

    fn location(&self, redirect: &Redirect) -> String {
        let request = self.request;
        let (path, query) = headers::split_path(request.path);
        let scheme = redirect.scheme.as_deref().unwrap_or(request.scheme);
        let host = match (&redirect.host, redirect.port) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.clone(),
            (None, Some(port)) => {
                let (bare, _) = host_pattern::split_authority(request.authority);
                if bare.contains(':') {
                    format!("[{bare}]:{port}")
                } else {
                    format!("{bare}:{port}")
                }
            }
            (None, None) => request.authority.to_owned(),
        };
        let new_path = match (&redirect.path, &redirect.path_rewrite) {
            (Some(fixed), _) => fixed.clone(),
            (None, Some(rewrite)) => rewrite_path(rewrite, path),
            (None, None) => path.to_owned(),
        };
        match query {
            Some(query) if !redirect.strip_query && !query.is_empty() => {
                format!("{scheme}://{host}{new_path}?{query}")
            }
            _ => format!("{scheme}://{host}{new_path}"),
        }
    }
}

/// Applies a path rewrite to a path without query string. A result that
/// does not start with `/` gets one.
pub fn rewrite_path(rewrite: &PathRewrite, path: &str) -> String {
    let rewritten = match rewrite {
        PathRewrite::Prefix { from, to } => match path.strip_prefix(from.as_str()) {
            Some(rest) => match (to.ends_with('/'), rest.strip_prefix('/')) {
                (true, Some(tail)) => format!("{to}{tail}"),
                _ => format!("{to}{rest}"),
            },
            None => return path.to_owned(),
        },
        PathRewrite::Regex {
            pattern,
            substitution,
        } => pattern
            .0
            .replace_all(path, substitution.as_str())
            .into_owned(),
    };
    if rewritten.starts_with('/') {
        rewritten
    } else {
        format!("/{rewritten}")
    }
}

/// All values of header `name`, joined with `,` (how `baggage` combines).
fn combined(headers: &[Header<'_>], name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_ref())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

#[cfg(test)]
mod tests;
