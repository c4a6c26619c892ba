//! Mapping between `common::vector` types and the wire types, in one place.

use std::collections::{BTreeMap, HashMap};

use common::ids::{EpisodeId, TenantId, VectorId};
use common::vector::{MetadataFilter, RangeBound, VectorRecord, VectorStoreError, meta};

use crate::proto;
use crate::proto::metadata_filter::FilterType;
use crate::proto::range_match::Bound;

/// The KyroDB namespace of a tenant. KyroDB treats an empty namespace as "all namespaces",
/// so this refuses to produce one: every data RPC we send is scoped.
pub(crate) fn namespace(tenant: TenantId) -> Result<String, VectorStoreError> {
    let ns = tenant.to_string();
    if ns.is_empty() {
        // Unreachable for a UUID, and must stay so: an empty namespace reads all tenants.
        return Err(VectorStoreError::InvalidArgument(
            "refusing to send an empty KyroDB namespace".into(),
        ));
    }
    Ok(ns)
}

/// Our filter as wire type.
pub(crate) fn filter_to_proto(filter: &MetadataFilter) -> proto::MetadataFilter {
    let filter_type = match filter {
        MetadataFilter::Exact { key, value } => FilterType::Exact(proto::ExactMatch {
            key: key.clone(),
            value: value.clone(),
        }),
        MetadataFilter::In { key, values } => FilterType::InMatch(proto::InMatch {
            key: key.clone(),
            values: values.clone(),
        }),
        MetadataFilter::Range { key, bound, value } => FilterType::Range(proto::RangeMatch {
            key: key.clone(),
            bound: Some(match bound {
                RangeBound::Gte => Bound::Gte(value.clone()),
                RangeBound::Lte => Bound::Lte(value.clone()),
                RangeBound::Gt => Bound::Gt(value.clone()),
                RangeBound::Lt => Bound::Lt(value.clone()),
            }),
        }),
        MetadataFilter::And(all) => FilterType::AndFilter(proto::AndFilter {
            filters: all.iter().map(filter_to_proto).collect(),
        }),
        MetadataFilter::Or(any) => FilterType::OrFilter(proto::OrFilter {
            filters: any.iter().map(filter_to_proto).collect(),
        }),
        MetadataFilter::Not(inner) => FilterType::NotFilter(Box::new(proto::NotFilter {
            filter: Some(Box::new(filter_to_proto(inner))),
        })),
    };
    proto::MetadataFilter {
        filter_type: Some(filter_type),
    }
}

/// The filter every read and delete of a tenant carries: `tenant_id == tenant`, AND-ed with
/// the caller's filter if any.
pub(crate) fn tenant_filter(tenant: TenantId, extra: Option<&MetadataFilter>) -> MetadataFilter {
    let own = MetadataFilter::exact(meta::TENANT, tenant.to_string());
    match extra {
        None => own,
        Some(extra) => MetadataFilter::And(vec![own, extra.clone()]),
    }
}

/// Rejects metadata the store reserves, or that contradicts the record's own tenant/episode.
pub(crate) fn check_metadata(record: &VectorRecord) -> Result<(), VectorStoreError> {
    for key in record.metadata.keys() {
        if meta::RESERVED.contains(&key.as_str()) {
            return Err(VectorStoreError::InvalidArgument(format!(
                "metadata key {key:?} is reserved by KyroDB"
            )));
        }
    }
    let conflicts = |key: &str, expected: String| {
        record
            .metadata
            .get(key)
            .is_some_and(|actual| *actual != expected)
    };
    if conflicts(meta::TENANT, record.tenant.to_string())
        || conflicts(meta::EPISODE, record.episode.to_string())
    {
        return Err(VectorStoreError::InvalidArgument(format!(
            "metadata keys {:?}/{:?} must match the record's tenant and episode",
            meta::TENANT,
            meta::EPISODE
        )));
    }
    Ok(())
}

/// The wire insert of one record: namespace = tenant, metadata + tenant and episode keys.
pub(crate) fn insert_request(
    record: &VectorRecord,
) -> Result<proto::InsertRequest, VectorStoreError> {
    check_metadata(record)?;
    let mut metadata: HashMap<String, String> = record
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.insert(meta::TENANT.to_owned(), record.tenant.to_string());
    metadata.insert(meta::EPISODE.to_owned(), record.episode.to_string());
    Ok(proto::InsertRequest {
        doc_id: record.id.get(),
        embedding: record.embedding.as_slice().to_vec(),
        metadata,
        namespace: namespace(record.tenant)?,
    })
}

/// Whether returned metadata belongs to `tenant` (defence in depth against a server that
/// ignores namespaces or filters).
pub(crate) fn owned_by(metadata: &HashMap<String, String>, tenant: TenantId) -> bool {
    metadata
        .get(meta::TENANT)
        .and_then(|t| t.parse::<TenantId>().ok())
        == Some(tenant)
}

pub(crate) fn episode_of(metadata: &HashMap<String, String>) -> Option<EpisodeId> {
    metadata.get(meta::EPISODE)?.parse().ok()
}

pub(crate) fn vector_id(doc_id: u64) -> Option<VectorId> {
    VectorId::try_from(doc_id).ok()
}

/// Server metadata as ours, minus what the server reserves.
pub(crate) fn to_btree(metadata: HashMap<String, String>) -> BTreeMap<String, String> {
    metadata
        .into_iter()
        .filter(|(k, _)| !meta::RESERVED.contains(&k.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::embedding::Embedding;

    #[test]
    fn filters_map_to_the_wire() {
        let f = MetadataFilter::Or(vec![
            MetadataFilter::exact("a", "1"),
            MetadataFilter::Not(Box::new(MetadataFilter::Range {
                key: "t".into(),
                bound: RangeBound::Lt,
                value: "5".into(),
            })),
        ]);
        let wire = filter_to_proto(&f);
        let Some(FilterType::OrFilter(or)) = wire.filter_type else {
            panic!("expected or");
        };
        assert_eq!(or.filters.len(), 2);
        let Some(FilterType::NotFilter(not)) = &or.filters[1].filter_type else {
            panic!("expected not");
        };
        let inner = not.filter.as_deref().and_then(|f| f.filter_type.clone());
        assert!(matches!(
            inner,
            Some(FilterType::Range(proto::RangeMatch { bound: Some(Bound::Lt(v)), .. })) if v == "5"
        ));
    }

    #[test]
    fn insert_request_is_scoped_and_rejects_reserved_keys() -> Result<(), Box<dyn std::error::Error>>
    {
        let tenant = TenantId::new();
        let episode = EpisodeId::new();
        let mut record = VectorRecord {
            id: VectorId::for_episode(tenant, episode),
            tenant,
            episode,
            embedding: Embedding::new(vec![1.0, 2.0])?,
            metadata: BTreeMap::from([("error_class".into(), "x".into())]),
        };
        let req = insert_request(&record)?;
        assert_eq!(req.namespace, tenant.to_string());
        assert_eq!(req.metadata.get(meta::TENANT), Some(&tenant.to_string()));
        assert_eq!(req.metadata.get(meta::EPISODE), Some(&episode.to_string()));
        assert!(owned_by(&req.metadata, tenant));
        assert!(!owned_by(&req.metadata, TenantId::new()));

        record
            .metadata
            .insert("__tenant_id__".into(), "evil".into());
        assert!(matches!(
            insert_request(&record),
            Err(VectorStoreError::InvalidArgument(_))
        ));
        record.metadata.remove("__tenant_id__");
        record
            .metadata
            .insert(meta::TENANT.into(), TenantId::new().to_string());
        assert!(insert_request(&record).is_err());
        Ok(())
    }
}
