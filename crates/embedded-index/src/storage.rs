//! The durable half: one redb file holding every vector and its metadata.
//!
//! Layout: a `meta` table (format version, dimension) and one table per tenant, named
//! `tenant/<uuid>`, mapping the vector id to an encoded [`StoredRecord`]. A tenant is a real
//! partition on disk: nothing reads one tenant's table while serving another, and deleting a
//! tenant drops its table.
//!
//! Every write is one redb transaction committed with `Durability::Immediate` (the default: the
//! commit fsyncs before it returns), so whatever a call acknowledged survives a crash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::ids::{EpisodeId, TenantId, VectorId};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};
use uuid::Uuid;

use crate::error::IndexError;

const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
const FORMAT_KEY: &str = "format_version";
const DIMENSION_KEY: &str = "dimension";
const FORMAT_VERSION: u64 = 1;
const RECORD_VERSION: u8 = 1;
const TENANT_PREFIX: &str = "tenant/";
/// File name of the database inside the index directory.
pub const FILE_NAME: &str = "vectors.redb";

/// One vector as kept on disk (tenant implied by its table).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredRecord {
    pub id: VectorId,
    pub episode: EpisodeId,
    pub vector: Vec<f32>,
    pub metadata: BTreeMap<String, String>,
}

/// A batch of changes for one tenant, applied in one transaction with others.
pub(crate) enum Change<'a> {
    Put(&'a StoredRecord),
    Delete(VectorId),
}

pub(crate) struct Storage {
    db: Database,
    path: PathBuf,
    dimension: usize,
}

fn table_name(tenant: TenantId) -> String {
    format!("{TENANT_PREFIX}{tenant}")
}

fn table(name: &str) -> TableDefinition<'_, u64, &'static [u8]> {
    TableDefinition::new(name)
}

impl Storage {
    /// Opens (creating if needed) the database in `dir` and checks its dimension.
    pub fn open(dir: &Path, dimension: usize) -> Result<Self, IndexError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => IndexError::AlreadyOpen(path.clone()),
            other => other.into(),
        })?;
        let storage = Self {
            db,
            path,
            dimension,
        };
        storage.check_meta()?;
        Ok(storage)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_meta(&self) -> Result<(), IndexError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let stored_dim = meta.get(DIMENSION_KEY)?.map(|g| g.value());
            match stored_dim {
                Some(d) if d != self.dimension as u64 => {
                    return Err(IndexError::DimensionMismatch {
                        expected: usize::try_from(d).unwrap_or(usize::MAX),
                        actual: self.dimension,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert(DIMENSION_KEY, self.dimension as u64)?;
                }
            }
            let format = meta.get(FORMAT_KEY)?.map(|g| g.value());
            match format {
                Some(FORMAT_VERSION) => {}
                Some(other) => {
                    return Err(IndexError::Corrupt {
                        table: "meta".into(),
                        reason: format!("unsupported format version {other}"),
                    });
                }
                None => {
                    meta.insert(FORMAT_KEY, FORMAT_VERSION)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Reads every tenant's records (used once, at open).
    pub fn load_all(&self) -> Result<Vec<(TenantId, Vec<StoredRecord>)>, IndexError> {
        let txn = self.db.begin_read()?;
        let mut names = Vec::new();
        for handle in txn.list_tables()? {
            let name = handle.name().to_owned();
            if let Some(rest) = name.strip_prefix(TENANT_PREFIX) {
                let tenant = rest.parse::<TenantId>().map_err(|e| IndexError::Corrupt {
                    table: name.clone(),
                    reason: e.to_string(),
                })?;
                names.push((tenant, name));
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for (tenant, name) in names {
            let t = txn.open_table(table(&name))?;
            let mut records = Vec::with_capacity(usize::try_from(t.len()?).unwrap_or(0));
            for entry in t.iter()? {
                let (k, v) = entry?;
                records.push(decode(&name, k.value(), v.value(), self.dimension)?);
            }
            out.push((tenant, records));
        }
        Ok(out)
    }

    /// Applies changes for several tenants in one durable transaction. Returns, per tenant and
    /// in order, how many of its deletes removed an existing record.
    pub fn apply(&self, batches: &[(TenantId, Vec<Change<'_>>)]) -> Result<Vec<u64>, IndexError> {
        let txn = self.db.begin_write()?;
        let mut deleted = Vec::with_capacity(batches.len());
        let mut buf = Vec::new();
        for (tenant, changes) in batches {
            let name = table_name(*tenant);
            let mut t = txn.open_table(table(&name))?;
            let mut n = 0u64;
            for change in changes {
                match change {
                    Change::Put(r) => {
                        encode(r, &mut buf)?;
                        t.insert(r.id.get(), buf.as_slice())?;
                    }
                    Change::Delete(id) => {
                        if t.remove(id.get())?.is_some() {
                            n += 1;
                        }
                    }
                }
            }
            let empty = t.is_empty()?;
            drop(t);
            if empty {
                // Keep no empty partitions around (a tenant that deleted everything).
                txn.delete_table(table(&name))?;
            }
            deleted.push(n);
        }
        txn.commit()?;
        Ok(deleted)
    }

    /// Drops a tenant's table; returns how many records it held.
    pub fn delete_tenant(&self, tenant: TenantId) -> Result<u64, IndexError> {
        let name = table_name(tenant);
        let txn = self.db.begin_write()?;
        let n = {
            let exists = txn.list_tables()?.any(|h| h.name() == name);
            if exists {
                let n = txn.open_table(table(&name))?.len()?;
                txn.delete_table(table(&name))?;
                n
            } else {
                0
            }
        };
        txn.commit()?;
        Ok(n)
    }

    /// A cheap liveness probe: a read transaction on the meta table.
    pub fn probe(&self) -> Result<(), IndexError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let _ = meta.get(DIMENSION_KEY)?;
        Ok(())
    }
}

/// `[version u8][episode uuid 16][vector: dim × f32 LE][metadata JSON]`.
fn encode(r: &StoredRecord, buf: &mut Vec<u8>) -> Result<(), IndexError> {
    buf.clear();
    buf.reserve(1 + 16 + r.vector.len() * 4 + 64);
    buf.push(RECORD_VERSION);
    buf.extend_from_slice(r.episode.as_uuid().as_bytes());
    for v in &r.vector {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    serde_json::to_writer(&mut *buf, &r.metadata)
        .map_err(|e| IndexError::InvalidArgument(format!("metadata not encodable: {e}")))?;
    Ok(())
}

fn decode(table: &str, id: u64, bytes: &[u8], dim: usize) -> Result<StoredRecord, IndexError> {
    let corrupt = |reason: String| IndexError::Corrupt {
        table: table.to_owned(),
        reason: format!("record {id}: {reason}"),
    };
    let id = VectorId::try_from(id).map_err(|e| corrupt(e.to_string()))?;
    let (&version, rest) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty value".into()))?;
    if version != RECORD_VERSION {
        return Err(corrupt(format!("unknown record version {version}")));
    }
    let vec_len = dim * 4;
    if rest.len() < 16 + vec_len {
        return Err(corrupt(format!(
            "value of {} bytes is too short",
            bytes.len()
        )));
    }
    let (uuid, rest) = rest.split_at(16);
    let (vector, json) = rest.split_at(vec_len);
    let uuid = Uuid::from_slice(uuid).map_err(|e| corrupt(e.to_string()))?;
    let vector = vector
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let metadata = serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))?;
    Ok(StoredRecord {
        id,
        episode: EpisodeId::from_uuid(uuid),
        vector,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_rejected() {
        let r = StoredRecord {
            id: VectorId::try_from(42u64).expect("valid id"),
            episode: EpisodeId::new(),
            vector: vec![0.6, 0.8],
            metadata: [("k".to_owned(), "v".to_owned())].into(),
        };
        let mut buf = Vec::new();
        assert!(encode(&r, &mut buf).is_ok());
        let back = decode("t", 42, &buf, 2);
        assert_eq!(back.ok(), Some(r));
        assert!(decode("t", 42, &buf[..10], 2).is_err());
        assert!(decode("t", 42, &[], 2).is_err());
        assert!(decode("t", 0, &buf, 2).is_err());
    }
}
