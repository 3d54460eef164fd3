//! What a real API server fills in or rewrites on every write, so drift detection meets the
//! same server-side changes here as on a cluster: defaulted fields, allocated IPs and ports,
//! `stringData` folded into `data`, and resource quantities in canonical form.

use base64::Engine as _;
use serde_json::{Map, Value, json};

/// Counters for allocated addresses, kept by the server.
#[derive(Debug, Default)]
pub struct Allocator {
    next_ip: u32,
    next_node_port: u32,
}

impl Allocator {
    fn cluster_ip(&mut self) -> String {
        self.next_ip += 1;
        let n = self.next_ip;
        format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff)
    }

    fn node_port(&mut self) -> i64 {
        self.next_node_port += 1;
        i64::from(30000 + self.next_node_port % 2768)
    }
}

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_owned(), value);
    }
}

fn obj<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    v.get_mut(key).and_then(Value::as_object_mut)
}

/// Applies the defaults of `kind` to an object about to be stored.
pub fn apply(kind: &str, object: &mut Value, alloc: &mut Allocator) {
    match kind {
        "Deployment" => {
            if let Some(spec) = obj(object, "spec") {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                let recreate = spec
                    .get("strategy")
                    .and_then(|s| s.get("type"))
                    .and_then(Value::as_str)
                    == Some("Recreate");
                set_default(spec, "strategy", json!({}));
                let strategy = spec["strategy"].as_object_mut().expect("object");
                set_default(strategy, "type", json!("RollingUpdate"));
                if !recreate {
                    set_default(strategy, "rollingUpdate", json!({}));
                    if let Some(ru) = strategy["rollingUpdate"].as_object_mut() {
                        set_default(ru, "maxUnavailable", json!("25%"));
                        set_default(ru, "maxSurge", json!("25%"));
                    }
                }
            }
            pod_template(object.pointer_mut("/spec/template"));
        }
        "StatefulSet" => {
            if let Some(spec) = obj(object, "spec") {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "podManagementPolicy", json!("OrderedReady"));
                set_default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                );
                set_default(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
                if let Some(Value::Array(templates)) = spec.get_mut("volumeClaimTemplates") {
                    for t in templates {
                        if let Some(m) = t.as_object_mut() {
                            set_default(m, "apiVersion", json!("v1"));
                            set_default(m, "kind", json!("PersistentVolumeClaim"));
                        }
                        pvc_spec(t.get_mut("spec"));
                    }
                }
            }
            pod_template(object.pointer_mut("/spec/template"));
        }
        "DaemonSet" => {
            if let Some(spec) = obj(object, "spec") {
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
                );
            }
            pod_template(object.pointer_mut("/spec/template"));
        }
        "ReplicaSet" | "ReplicationController" => {
            if let Some(spec) = obj(object, "spec") {
                set_default(spec, "replicas", json!(1));
            }
            pod_template(object.pointer_mut("/spec/template"));
        }
        "Job" => {
            job_spec(object.get_mut("spec"));
        }
        "CronJob" => {
            if let Some(spec) = obj(object, "spec") {
                set_default(spec, "concurrencyPolicy", json!("Allow"));
                set_default(spec, "suspend", json!(false));
                set_default(spec, "successfulJobsHistoryLimit", json!(3));
                set_default(spec, "failedJobsHistoryLimit", json!(1));
            }
            job_spec(object.pointer_mut("/spec/jobTemplate/spec"));
        }
        "Pod" => {
            pod_spec(object.get_mut("spec"));
            if let Some(m) = object.as_object_mut() {
                set_default(m, "status", json!({"phase": "Pending", "qosClass": "BestEffort"}));
            }
        }
        "Service" => service(object, alloc),
        "Secret" => secret(object),
        "Namespace" => {
            let name = object.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
            if let Some(meta) = obj(object, "metadata") {
                set_default(meta, "labels", json!({}));
                if let Some(labels) = meta["labels"].as_object_mut() {
                    labels.insert("kubernetes.io/metadata.name".to_owned(), name);
                }
            }
            if let Some(m) = object.as_object_mut() {
                set_default(m, "spec", json!({"finalizers": ["kubernetes"]}));
                set_default(m, "status", json!({"phase": "Active"}));
            }
        }
        "PersistentVolumeClaim" => {
            pvc_spec(object.get_mut("spec"));
            if let Some(m) = object.as_object_mut() {
                set_default(m, "status", json!({"phase": "Pending"}));
            }
        }
        "NetworkPolicy" => {
            if let Some(spec) = obj(object, "spec")
                && spec.get("policyTypes").is_none()
            {
                let mut types = vec![json!("Ingress")];
                if spec.contains_key("egress") {
                    types.push(json!("Egress"));
                }
                spec.insert("policyTypes".to_owned(), Value::Array(types));
            }
        }
        "ResourceQuota" => {
            if let Some(hard) = object.pointer_mut("/spec/hard") {
                quantities(hard);
            }
        }
        "LimitRange" => {
            if let Some(Value::Array(limits)) = object.pointer_mut("/spec/limits") {
                for l in limits {
                    for k in ["default", "defaultRequest", "max", "min", "maxLimitRequestRatio"] {
                        if let Some(q) = l.get_mut(k) {
                            quantities(q);
                        }
                    }
                }
            }
        }
        "CustomResourceDefinition" => {
            if let Some(spec) = obj(object, "spec") {
                set_default(spec, "conversion", json!({"strategy": "None"}));
            }
        }
        _ => {}
    }
}

fn job_spec(spec: Option<&mut Value>) {
    let Some(spec) = spec else { return };
    if let Some(m) = spec.as_object_mut() {
        set_default(m, "parallelism", json!(1));
        set_default(m, "completions", json!(1));
        set_default(m, "backoffLimit", json!(6));
        set_default(m, "completionMode", json!("NonIndexed"));
        set_default(m, "suspend", json!(false));
        set_default(m, "podReplacementPolicy", json!("TerminatingOrFailed"));
    }
    pod_template(spec.get_mut("template"));
}

fn pod_template(template: Option<&mut Value>) {
    if let Some(t) = template {
        if let Some(meta) = t.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("creationTimestamp");
        }
        pod_spec(t.get_mut("spec"));
    }
}

fn pod_spec(spec: Option<&mut Value>) {
    let Some(Value::Object(spec)) = spec else { return };
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(containers)) = spec.get_mut(list) {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                container(c);
            }
        }
    }
    if let Some(Value::Array(volumes)) = spec.get_mut("volumes") {
        for v in volumes.iter_mut() {
            for source in ["configMap", "secret"] {
                if let Some(Value::Object(s)) = v.get_mut(source) {
                    set_default(s, "defaultMode", json!(420));
                }
            }
            if let Some(limit) = v.pointer_mut("/emptyDir/sizeLimit") {
                quantity(limit);
            }
        }
    }
}

fn container(c: &mut Map<String, Value>) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    let tagless = {
        let last = image.rsplit('/').next().unwrap_or(image);
        !last.contains(':') && !image.contains('@')
    };
    let policy = if tagless || image.ends_with(":latest") {
        "Always"
    } else {
        "IfNotPresent"
    };
    set_default(c, "imagePullPolicy", json!(policy));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    if let Some(Value::Array(ports)) = c.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    if let Some(Value::Object(resources)) = c.get_mut("resources") {
        for k in ["requests", "limits"] {
            if let Some(q) = resources.get_mut(k) {
                quantities(q);
            }
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(Value::Object(p)) = c.get_mut(probe) {
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
            if let Some(Value::Object(get)) = p.get_mut("httpGet") {
                set_default(get, "path", json!("/"));
                set_default(get, "scheme", json!("HTTP"));
            }
        }
    }
}

fn pvc_spec(spec: Option<&mut Value>) {
    let Some(Value::Object(spec)) = spec else { return };
    set_default(spec, "volumeMode", json!("Filesystem"));
    if let Some(Value::Object(r)) = spec.get_mut("resources") {
        for k in ["requests", "limits"] {
            if let Some(q) = r.get_mut(k) {
                quantities(q);
            }
        }
    }
}

fn service(object: &mut Value, alloc: &mut Allocator) {
    let Some(spec) = obj(object, "spec") else { return };
    set_default(spec, "type", json!("ClusterIP"));
    let kind = spec["type"].as_str().unwrap_or("ClusterIP").to_owned();
    if kind == "ExternalName" {
        return;
    }
    set_default(spec, "sessionAffinity", json!("None"));
    if spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        spec.insert("clusterIP".to_owned(), json!(alloc.cluster_ip()));
    }
    let ip = spec["clusterIP"].clone();
    set_default(spec, "clusterIPs", json!([ip]));
    set_default(spec, "ipFamilies", json!(["IPv4"]));
    set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
    set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    let external = kind == "NodePort" || kind == "LoadBalancer";
    if external {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
            let port = p.get("port").cloned().unwrap_or(Value::Null);
            set_default(p, "targetPort", port);
            if external {
                let np = alloc.node_port();
                set_default(p, "nodePort", json!(np));
            }
        }
    }
    if let Some(m) = object.as_object_mut() {
        set_default(m, "status", json!({"loadBalancer": {}}));
    }
}

fn secret(object: &mut Value) {
    let Some(m) = object.as_object_mut() else { return };
    set_default(m, "type", json!("Opaque"));
    if let Some(Value::Object(string_data)) = m.remove("stringData") {
        set_default(m, "data", json!({}));
        if let Some(data) = m["data"].as_object_mut() {
            for (k, v) in string_data {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                data.insert(k, json!(base64::engine::general_purpose::STANDARD.encode(text)));
            }
        }
    }
}

/// Canonicalizes every quantity in a map of quantities.
fn quantities(map: &mut Value) {
    if let Value::Object(m) = map {
        for v in m.values_mut() {
            quantity(v);
        }
    }
}

fn quantity(v: &mut Value) {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return,
    };
    if let Some(canonical) = canonical_quantity(&text) {
        *v = Value::String(canonical);
    }
}

/// A resource quantity in the canonical form the API server stores (`1000m` → `1`,
/// `0.5` → `500m`, `1024Mi` → `1Gi`, `1536Mi` stays), or None if it is not a quantity.
pub fn canonical_quantity(text: &str) -> Option<String> {
    let text = text.trim();
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let split = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(split);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{int_part}{frac_part}");
    let mantissa: i128 = digits.parse().ok()?;
    let frac_len = frac_part.len() as i32;
    let binary = match suffix {
        "Ki" => Some(10),
        "Mi" => Some(20),
        "Gi" => Some(30),
        "Ti" => Some(40),
        "Pi" => Some(50),
        "Ei" => Some(60),
        _ => None,
    };
    let sign = if negative { "-" } else { "" };
    if let Some(shift) = binary {
        // value = mantissa * 2^shift / 10^frac_len
        let scaled = mantissa.checked_shl(shift)?;
        let denom = 10i128.checked_pow(frac_len as u32)?;
        if scaled % denom == 0 && scaled / denom >= 1024 {
            let mut value = scaled / denom;
            let mut unit = 0usize;
            while value % 1024 == 0 && unit < 6 {
                value /= 1024;
                unit += 1;
            }
            let suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
            return Some(format!("{sign}{value}{}", suffixes[unit]));
        }
        // Small or fractional binary quantities are written in decimal.
        let nanos = (scaled * 1_000_000_000 + denom - 1) / denom;
        return Some(format!("{sign}{}", decimal(nanos)));
    }
    let exp10: i32 = match suffix {
        "n" => -9,
        "u" => -6,
        "m" => -3,
        "" => 0,
        "k" => 3,
        "M" => 6,
        "G" => 9,
        "T" => 12,
        "P" => 15,
        "E" => 18,
        s if s.starts_with(['e', 'E']) => s[1..].parse().ok()?,
        _ => return None,
    };
    // value in nano-units, rounded up as the server rounds
    let shift = exp10 + 9 - frac_len;
    let nanos = if shift >= 0 {
        mantissa.checked_mul(10i128.checked_pow(shift as u32)?)?
    } else {
        let d = 10i128.checked_pow((-shift) as u32)?;
        (mantissa + d - 1) / d
    };
    if suffix.starts_with(['e', 'E']) {
        return Some(format!("{sign}{}", exponent(nanos)));
    }
    Some(format!("{sign}{}", decimal(nanos)))
}

fn decimal(nanos: i128) -> String {
    if nanos == 0 {
        return "0".to_owned();
    }
    let suffixes = [
        (18, "E"),
        (15, "P"),
        (12, "T"),
        (9, "G"),
        (6, "M"),
        (3, "k"),
        (0, ""),
        (-3, "m"),
        (-6, "u"),
        (-9, "n"),
    ];
    for (exp, s) in suffixes {
        let unit = 10i128.pow((exp + 9) as u32);
        if nanos % unit == 0 {
            return format!("{}{s}", nanos / unit);
        }
    }
    unreachable!("every value is a whole number of nano-units")
}

fn exponent(nanos: i128) -> String {
    if nanos == 0 {
        return "0".to_owned();
    }
    for exp in (-9..=18).rev().step_by(3) {
        let unit = 10i128.pow((exp + 9) as u32);
        if nanos % unit == 0 {
            let value = nanos / unit;
            return if exp == 0 {
                value.to_string()
            } else {
                format!("{value}e{exp}")
            };
        }
    }
    unreachable!("every value is a whole number of nano-units")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_take_their_canonical_form() {
        for (input, canonical) in [
            ("1000m", "1"),
            ("2000m", "2"),
            ("100m", "100m"),
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("1", "1"),
            ("1000", "1k"),
            ("1024Mi", "1Gi"),
            ("1536Mi", "1536Mi"),
            ("2048Ki", "2Mi"),
            ("0.5Gi", "512Mi"),
            ("512", "512"),
            ("128974848", "128974848"),
            ("129M", "129M"),
            ("1e3", "1e3"),
            ("250m", "250m"),
        ] {
            assert_eq!(canonical_quantity(input).as_deref(), Some(canonical), "{input}");
        }
        assert_eq!(canonical_quantity("abc"), None);
        assert_eq!(canonical_quantity("1X"), None);
    }

    #[test]
    fn deployment_defaults() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "nginx", "ports": [{"containerPort": 80}]}]}}}});
        apply("Deployment", &mut d, &mut Allocator::default());
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["replicas"], 1);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
    }
}
