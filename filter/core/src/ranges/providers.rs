//! Readers for the clouds' published IP range files: AWS `ip-ranges.json`, Google Cloud
//! `cloud.json`, Azure Service Tags. Each yields one [`Claim`] per (prefix, region) row, and a
//! malformed file gives an error naming the file, the entry and the field.

use super::{Claim, Cloud};
use crate::cidr_table::parse_prefix;
use ipnet::IpNet;
use serde_json::Value;
use std::fmt;

/// A provider file that cannot be read as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file, as the operator named it.
    pub file: String,
    /// Where in the file: `prefixes[12].ip_prefix`, or empty for the document.
    pub at: String,
    /// What is wrong, quoting the value.
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.at, self.message)
        }
    }
}

/// Reads one provider file.
pub fn parse(cloud: Cloud, file: &str, bytes: &[u8]) -> Result<Vec<Claim>, FileError> {
    let reader = Reader { file };
    let document: Value = serde_json::from_slice(bytes)
        .map_err(|e| reader.error(String::new(), format!("not JSON: {e}")))?;
    match cloud {
        Cloud::Aws => reader.aws(&document),
        Cloud::Gcp => reader.gcp(&document),
        Cloud::Azure => reader.azure(&document),
    }
}

struct Reader<'a> {
    file: &'a str,
}

impl Reader<'_> {
    fn error(&self, at: String, message: String) -> FileError {
        FileError { file: self.file.to_string(), at, message }
    }

    fn array<'v>(&self, value: &'v Value, at: &str) -> Result<&'v Vec<Value>, FileError> {
        value.as_array().ok_or_else(|| self.error(at.to_string(), "must be an array".into()))
    }

    fn string<'v>(&self, entry: &'v Value, at: &str, key: &str) -> Result<&'v str, FileError> {
        match entry.get(key) {
            Some(Value::String(text)) => Ok(text),
            Some(other) => {
                Err(self.error(format!("{at}.{key}"), format!("{other} is not a string")))
            }
            None => Err(self.error(at.to_string(), format!("has no \"{key}\""))),
        }
    }

    fn prefix(&self, text: &str, at: String) -> Result<IpNet, FileError> {
        let prefix = parse_prefix(text)
            .ok_or_else(|| self.error(at.clone(), format!("{text:?} is not a CIDR prefix")))?;
        if prefix.trunc() != prefix {
            return Err(self.error(at, format!("{text:?} has host bits set")));
        }
        Ok(prefix)
    }

    /// `prefixes[].{ip_prefix,region}` and `ipv6_prefixes[].{ipv6_prefix,region}`.
    fn aws(&self, document: &Value) -> Result<Vec<Claim>, FileError> {
        let mut claims = Vec::new();
        for (list, key) in [("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")] {
            let Some(entries) = document.get(list) else {
                return Err(self.error(
                    String::new(),
                    format!("has no \"{list}\" (is it AWS ip-ranges.json?)"),
                ));
            };
            for (i, entry) in self.array(entries, list)?.iter().enumerate() {
                let at = format!("{list}[{i}]");
                let prefix = self.prefix(self.string(entry, &at, key)?, format!("{at}.{key}"))?;
                let region = self.string(entry, &at, "region")?;
                claims.push(Claim::new(Cloud::Aws, region, prefix));
            }
        }
        Ok(claims)
    }

    /// `prefixes[].{ipv4Prefix|ipv6Prefix, scope}`.
    fn gcp(&self, document: &Value) -> Result<Vec<Claim>, FileError> {
        let Some(entries) = document.get("prefixes") else {
            return Err(self.error(
                String::new(),
                "has no \"prefixes\" (is it Google Cloud cloud.json?)".into(),
            ));
        };
        let mut claims = Vec::new();
        for (i, entry) in self.array(entries, "prefixes")?.iter().enumerate() {
            let at = format!("prefixes[{i}]");
            let key = match (entry.get("ipv4Prefix"), entry.get("ipv6Prefix")) {
                (Some(_), None) => "ipv4Prefix",
                (None, Some(_)) => "ipv6Prefix",
                _ => {
                    return Err(self.error(
                        at,
                        "must have exactly one of \"ipv4Prefix\" and \"ipv6Prefix\"".into(),
                    ))
                }
            };
            let prefix = self.prefix(self.string(entry, &at, key)?, format!("{at}.{key}"))?;
            let scope = self.string(entry, &at, "scope")?;
            claims.push(Claim::new(Cloud::Gcp, scope, prefix));
        }
        Ok(claims)
    }

    /// `values[]` whose `name` is `AzureCloud.<region>`: `properties.{region,addressPrefixes[]}`.
    /// Other tags (per-service tags, the global `AzureCloud`) repeat these prefixes or carry no
    /// region, so they are skipped.
    fn azure(&self, document: &Value) -> Result<Vec<Claim>, FileError> {
        let Some(values) = document.get("values") else {
            return Err(self.error(
                String::new(),
                "has no \"values\" (is it an Azure Service Tags file?)".into(),
            ));
        };
        let mut claims = Vec::new();
        for (i, value) in self.array(values, "values")?.iter().enumerate() {
            let at = format!("values[{i}]");
            if !self.string(value, &at, "name")?.starts_with("AzureCloud.") {
                continue;
            }
            let properties = value
                .get("properties")
                .ok_or_else(|| self.error(at.clone(), "has no \"properties\"".into()))?;
            let at = format!("{at}.properties");
            let region = self.string(properties, &at, "region")?;
            if region.is_empty() {
                continue;
            }
            let prefixes = properties
                .get("addressPrefixes")
                .ok_or_else(|| self.error(at.clone(), "has no \"addressPrefixes\"".into()))?;
            for (j, text) in
                self.array(prefixes, &format!("{at}.addressPrefixes"))?.iter().enumerate()
            {
                let field = format!("{at}.addressPrefixes[{j}]");
                let text = text
                    .as_str()
                    .ok_or_else(|| self.error(field.clone(), format!("{text} is not a string")))?;
                claims.push(Claim::new(Cloud::Azure, region, self.prefix(text, field)?));
            }
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn errors(cloud: Cloud, json: &str) -> String {
        parse(cloud, "f.json", json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn reads_each_format() {
        let aws = r#"{"prefixes": [{"ip_prefix": "15.193.1.0/24", "region": "ap-northeast-1", "service": "AMAZON"}],
                      "ipv6_prefixes": [{"ipv6_prefix": "2a05:d012::/36", "region": "eu-west-3"}]}"#;
        let claims = parse(Cloud::Aws, "aws.json", aws.as_bytes()).unwrap();
        assert_eq!(claims.len(), 2);
        assert_eq!(
            (claims[1].region.as_str(), claims[1].prefix.to_string()),
            ("eu-west-3", "2a05:d012::/36".into())
        );
        let gcp = r#"{"prefixes": [{"ipv4Prefix": "34.88.0.0/16", "scope": "europe-north1"}, {"ipv6Prefix": "2600:1900:4280::/44", "scope": "us-west8"}]}"#;
        assert_eq!(parse(Cloud::Gcp, "gcp.json", gcp.as_bytes()).unwrap().len(), 2);
        let azure = r#"{"values": [
            {"name": "AzureCloud.eastus", "properties": {"region": "eastus", "addressPrefixes": ["20.42.0.0/17", "2603:1030:20c::/47"]}},
            {"name": "Storage.EastUS", "properties": {"region": "eastus", "addressPrefixes": ["20.42.0.0/17"]}},
            {"name": "AzureCloud", "properties": {"region": "", "addressPrefixes": ["20.0.0.0/8"]}}]}"#;
        let claims = parse(Cloud::Azure, "azure.json", azure.as_bytes()).unwrap();
        assert_eq!(claims.len(), 2);
        assert!(claims.iter().all(|c| c.region == "eastus"));
    }

    #[test]
    fn errors_name_file_entry_and_field() {
        assert_eq!(
            errors(
                Cloud::Aws,
                r#"{"prefixes": [{"ip_prefix": "1.2.3.0/24", "region": "x"}, {"ip_prefix": "1.2.3/24", "region": "x"}], "ipv6_prefixes": []}"#
            ),
            r#"f.json: prefixes[1].ip_prefix: "1.2.3/24" is not a CIDR prefix"#
        );
        assert_eq!(
            errors(
                Cloud::Aws,
                r#"{"prefixes": [{"ip_prefix": "1.2.3.0/24"}], "ipv6_prefixes": []}"#
            ),
            r#"f.json: prefixes[0]: has no "region""#
        );
        assert_eq!(
            errors(Cloud::Aws, r#"{"prefixes": []}"#),
            r#"f.json: has no "ipv6_prefixes" (is it AWS ip-ranges.json?)"#
        );
        assert_eq!(
            errors(Cloud::Gcp, r#"{"prefixes": [{"ipv4Prefix": "34.88.0.1/16", "scope": "x"}]}"#),
            r#"f.json: prefixes[0].ipv4Prefix: "34.88.0.1/16" has host bits set"#
        );
        assert_eq!(
            errors(Cloud::Gcp, r#"{"prefixes": [{"ipv4Prefix": "34.88.0.0/16", "scope": 7}]}"#),
            "f.json: prefixes[0].scope: 7 is not a string"
        );
        assert_eq!(
            errors(
                Cloud::Azure,
                r#"{"values": [{"name": "AzureCloud.x", "properties": {"region": "x", "addressPrefixes": [1]}}]}"#
            ),
            "f.json: values[0].properties.addressPrefixes[0]: 1 is not a string"
        );
        assert!(errors(Cloud::Azure, "{").starts_with("f.json: not JSON: EOF while parsing"));
    }
}
