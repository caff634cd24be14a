//! The embedded OpenAPI document as JSON: finding operations and inlining `$ref`s, so the API
//! commands work offline and always match the server they were built with.

use anyhow::Context as _;
use serde_json::{Map, Value};

/// HTTP methods an OpenAPI path item may hold, in the order they are listed.
const METHODS: &[&str] = &[
    "get", "post", "put", "patch", "delete", "head", "options", "trace",
];

/// How deep `$ref`s are inlined; a guard against pathological (non-cyclic) nesting.
const MAX_DEPTH: usize = 32;

/// The OpenAPI document of this build of the server.
pub struct Document {
    doc: Value,
}

/// One operation of the document.
pub struct Operation<'a> {
    pub id: &'a str,
    /// Upper-case HTTP method.
    pub method: String,
    /// Path template with `{name}` placeholders.
    pub path: &'a str,
    /// The operation object.
    pub spec: &'a Value,
    /// Parameters shared by every operation of the path.
    path_parameters: &'a [Value],
}

/// A parameter with its `$ref` resolved.
pub struct Parameter {
    pub name: String,
    pub location: String,
    pub required: bool,
    pub schema: Value,
    pub description: Option<String>,
}

impl Document {
    pub fn embedded() -> anyhow::Result<Self> {
        let doc = serde_json::to_value(tessera_server::openapi_document())
            .context("cannot serialize the embedded OpenAPI document")?;
        Ok(Self { doc })
    }

    #[cfg(test)]
    pub fn from_value(doc: Value) -> Self {
        Self { doc }
    }

    /// Every operation with an operationId, in document order.
    pub fn operations(&self) -> Vec<Operation<'_>> {
        let mut out = Vec::new();
        let Some(paths) = self.doc.get("paths").and_then(Value::as_object) else {
            return out;
        };
        for (path, item) in paths {
            let path_parameters = item
                .get("parameters")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            for method in METHODS {
                let Some(spec) = item.get(*method) else {
                    continue;
                };
                let Some(id) = spec.get("operationId").and_then(Value::as_str) else {
                    continue;
                };
                out.push(Operation {
                    id,
                    method: method.to_ascii_uppercase(),
                    path,
                    spec,
                    path_parameters,
                });
            }
        }
        out
    }

    /// The operation `id`, or an error naming the operations with a similar id.
    pub fn find(&self, id: &str) -> anyhow::Result<Operation<'_>> {
        let mut operations = self.operations();
        if let Some(index) = operations.iter().position(|op| op.id == id) {
            return Ok(operations.swap_remove(index));
        }
        let similar: Vec<&str> = operations
            .iter()
            .map(|op| op.id)
            .filter(|candidate| is_similar(id, candidate))
            .collect();
        if similar.is_empty() {
            anyhow::bail!("unknown operationId {id:?} (see `tessera api list`)")
        }
        anyhow::bail!(
            "unknown operationId {id:?}; did you mean {}?",
            similar.join(", ")
        )
    }

    /// The operation's parameters (path-level ones first, overridden by the operation's own).
    pub fn parameters(&self, op: &Operation<'_>) -> Vec<Parameter> {
        let own = op
            .spec
            .get("parameters")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let mut out: Vec<Parameter> = Vec::new();
        for raw in op.path_parameters.iter().chain(own) {
            let resolved = self.resolve(raw);
            let Some(name) = resolved.get("name").and_then(Value::as_str) else {
                continue;
            };
            let location = resolved
                .get("in")
                .and_then(Value::as_str)
                .unwrap_or("query");
            let parameter = Parameter {
                name: name.to_owned(),
                location: location.to_owned(),
                required: resolved
                    .get("required")
                    .and_then(Value::as_bool)
                    .unwrap_or(location == "path"),
                schema: resolved.get("schema").cloned().unwrap_or(Value::Null),
                description: resolved
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            };
            out.retain(|p| !(p.name == parameter.name && p.location == parameter.location));
            out.push(parameter);
        }
        out
    }

    /// The JSON request body: whether it is required and its schema, inlined.
    pub fn request_body(&self, op: &Operation<'_>) -> Option<(bool, Value)> {
        let body = self.resolve(op.spec.get("requestBody")?);
        let required = body
            .get("required")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let schema = json_schema(&body)?;
        Some((required, schema))
    }

    /// The first 2xx response: its status and, when it has a JSON body, the schema, inlined.
    pub fn success_response(&self, op: &Operation<'_>) -> Option<(String, Option<Value>)> {
        let responses = op.spec.get("responses")?.as_object()?;
        let (status, response) = responses
            .iter()
            .find(|(status, _)| status.starts_with('2'))?;
        let response = self.resolve(response);
        Some((status.clone(), json_schema(&response)))
    }

    /// `value` with every local `$ref` replaced by what it points to, recursively. A reference
    /// met again inside itself is left as the `$ref`, so cycles end.
    pub fn resolve(&self, value: &Value) -> Value {
        self.resolve_within(value, &mut Vec::new())
    }

    fn resolve_within(&self, value: &Value, seen: &mut Vec<String>) -> Value {
        match value {
            Value::Object(map) => {
                if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
                    if let Some(target) = self.follow(reference, seen) {
                        seen.push(reference.to_owned());
                        let mut resolved = self.resolve_within(target, seen);
                        seen.pop();
                        // OpenAPI 3.1 lets a `$ref` have siblings (such as a description);
                        // they refine the target.
                        if let Value::Object(resolved_map) = &mut resolved {
                            for (key, sibling) in map.iter().filter(|(key, _)| *key != "$ref") {
                                resolved_map
                                    .insert(key.clone(), self.resolve_within(sibling, seen));
                            }
                        }
                        return resolved;
                    }
                }
                let out: Map<String, Value> = map
                    .iter()
                    .map(|(key, item)| (key.clone(), self.resolve_within(item, seen)))
                    .collect();
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.resolve_within(item, seen))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// The target of a local reference that may be inlined here.
    fn follow(&self, reference: &str, seen: &[String]) -> Option<&Value> {
        if seen.len() >= MAX_DEPTH || seen.iter().any(|s| s == reference) {
            return None;
        }
        let pointer = reference.strip_prefix('#')?;
        self.doc.pointer(pointer)
    }
}

impl Operation<'_> {
    pub fn summary(&self) -> Option<&str> {
        self.spec.get("summary").and_then(Value::as_str)
    }

    pub fn description(&self) -> Option<&str> {
        self.spec.get("description").and_then(Value::as_str)
    }

    /// Names of the `{placeholders}` of the path, in order.
    pub fn path_placeholders(&self) -> Vec<&str> {
        let mut names = Vec::new();
        let mut rest = self.path;
        while let Some(start) = rest.find('{') {
            let Some(len) = rest[start..].find('}') else {
                break;
            };
            names.push(&rest[start + 1..start + len]);
            rest = &rest[start + len + 1..];
        }
        names
    }
}

/// The `application/json` (or else first) content schema of a request body or response.
fn json_schema(body: &Value) -> Option<Value> {
    let content = body.get("content")?.as_object()?;
    let media = content
        .get("application/json")
        .or_else(|| content.values().next())?;
    media.get("schema").cloned()
}

/// A short type for a parameter schema: `string`, `integer`, `string|null`, an enum's values…
pub fn schema_type(schema: &Value) -> String {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect();
        return values.join("|");
    }
    match schema.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("|"),
        _ => {
            for combinator in ["oneOf", "anyOf", "allOf"] {
                if let Some(options) = schema.get(combinator).and_then(Value::as_array) {
                    return options
                        .iter()
                        .map(schema_type)
                        .collect::<Vec<_>>()
                        .join("|");
                }
            }
            "any".to_owned()
        }
    }
}

/// Whether `candidate` is worth suggesting for the unknown operationId `wanted`.
fn is_similar(wanted: &str, candidate: &str) -> bool {
    let wanted = wanted.to_ascii_lowercase();
    let candidate = candidate.to_ascii_lowercase();
    if wanted.is_empty() {
        return false;
    }
    let common_prefix = wanted
        .bytes()
        .zip(candidate.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    candidate.contains(&wanted)
        || wanted.contains(&candidate)
        || common_prefix >= wanted.len().min(5)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly.
mod tests {
    use serde_json::json;

    use super::*;

    fn doc() -> Document {
        Document::from_value(json!({
            "paths": {
                "/things/{thing_id}": {
                    "parameters": [{"$ref": "#/components/parameters/ThingId"}],
                    "get": {
                        "operationId": "getThing",
                        "summary": "Get a thing",
                        "parameters": [
                            {"name": "expand", "in": "query", "schema": {"type": ["string", "null"]}}
                        ],
                        "responses": {
                            "404": {"description": "no"},
                            "200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}}
                        }
                    },
                    "delete": {"operationId": "deleteThing", "responses": {"204": {"description": "gone"}}}
                }
            },
            "components": {
                "parameters": {
                    "ThingId": {"name": "thing_id", "in": "path", "required": true, "schema": {"type": "string"}}
                },
                "schemas": {
                    "Thing": {
                        "type": "object",
                        "properties": {
                            "parent": {"$ref": "#/components/schemas/Thing", "description": "up"},
                            "kind": {"$ref": "#/components/schemas/Kind", "description": "which"}
                        }
                    },
                    "Kind": {"type": "string", "enum": ["a", "b"]}
                }
            }
        }))
    }

    #[test]
    fn finds_operations_and_suggests_close_ones() {
        let doc = doc();
        let ids: Vec<_> = doc.operations().iter().map(|op| op.id).collect();
        assert_eq!(ids, ["getThing", "deleteThing"]);
        let op = doc.find("getThing").unwrap();
        assert_eq!(op.method, "GET");
        assert_eq!(op.path_placeholders(), ["thing_id"]);
        assert_eq!(op.summary(), Some("Get a thing"));
        let err = doc.find("getthin").err().unwrap().to_string();
        assert!(err.contains("did you mean getThing"), "{err}");
        let err = doc.find("zzz").err().unwrap().to_string();
        assert!(err.contains("tessera api list"), "{err}");
    }

    #[test]
    fn parameters_merge_path_level_ones() {
        let doc = doc();
        let op = doc.find("getThing").unwrap();
        let params = doc.parameters(&op);
        assert_eq!(params.len(), 2);
        assert_eq!(params[0].name, "thing_id");
        assert!(params[0].required);
        assert_eq!(params[1].location, "query");
        assert!(!params[1].required);
        assert_eq!(schema_type(&params[1].schema), "string|null");
    }

    #[test]
    fn refs_are_inlined_and_cycles_stop() {
        let doc = doc();
        let op = doc.find("getThing").unwrap();
        let (status, schema) = doc.success_response(&op).unwrap();
        assert_eq!(status, "200");
        let schema = schema.unwrap();
        assert_eq!(schema["type"], "object");
        assert_eq!(
            schema["properties"]["kind"],
            json!({"type": "string", "enum": ["a", "b"], "description": "which"})
        );
        assert_eq!(
            schema["properties"]["parent"],
            json!({"$ref": "#/components/schemas/Thing", "description": "up"})
        );
        let op = doc.find("deleteThing").unwrap();
        assert_eq!(doc.success_response(&op), Some(("204".to_owned(), None)));
        assert!(doc.request_body(&op).is_none());
    }
}
