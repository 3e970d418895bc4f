//! Safetensors files with string metadata, written atomically (temporary file in the same
//! folder, fsync, rename), so an interrupted write never leaves a truncated checkpoint behind.
//! Reading refuses PyTorch pickles before anything else (unpickling can run arbitrary code, so
//! promptclip never does it) and leaves every size check of the header (length against the file,
//! data offsets, shape products) to the safetensors crate, which does them with checked
//! arithmetic before any tensor is allocated.
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

/// The folder `path` is written in ("." for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The temporary file name prefix of atomic writes to `path`: `.{name}.tmp-`, then the writer's
/// process id.
fn temp_prefix(path: &Path) -> String {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    format!(".{file_name}.tmp-")
}

/// Whether process `pid` is running. Only Linux can tell cheaply (/proc); elsewhere `None`.
fn process_alive(pid: u32) -> Option<bool> {
    if cfg!(target_os = "linux") && Path::new("/proc/self").exists() {
        Some(Path::new("/proc").join(pid.to_string()).exists())
    } else {
        None
    }
}

/// Remove the temporary files that earlier writes to `path` left behind when their process was
/// killed between creating and renaming them (`kill -9`, power loss). Only files of this target
/// are touched, and only those whose writer is gone: our own process id (an earlier write of
/// ours that could not clean up), a process id that is not running, or, where liveness cannot be
/// told, a file not modified for an hour (no write takes that long). A concurrent writer's
/// file is left alone.
fn remove_stale_temps(path: &Path) {
    let (dir, prefix) = (parent_dir(path), temp_prefix(path));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let own = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let stale = pid == own
            || match process_alive(pid) {
                Some(alive) => !alive,
                None => entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 3600),
            };
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Check, before long work, that `path` can be written later: its folder is created when missing
/// (as the write itself would), `path` must not be a folder, and a probe file is created and
/// removed in the folder. Errors are E_IO and name the path.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::write(
            path,
            std::io::Error::new(std::io::ErrorKind::IsADirectory, "it is a folder"),
        ));
    }
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
    let probe = dir.join(format!("{}{}", temp_prefix(path), std::process::id()));
    std::fs::File::create(&probe).map_err(|e| Error::write(path, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

pub fn write_safetensors_atomic(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
    // Contiguous f32/other CPU copies; safetensors serialises through candle's View impl.
    let owned: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.to_string(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(owned.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
        .map_err(|e| Error::Internal(format!("serialising {}: {e}", path.display())))?;
    remove_stale_temps(path);
    let tmp = dir.join(format!("{}{}", temp_prefix(path), std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::write(path, e)
    })
}

/// Refuse a PyTorch pickle (`torch.save` output: a zip archive, or a bare pickle stream) given
/// where a safetensors file is expected, before it is parsed. Nothing in it is ever unpickled.
pub fn refuse_pickle(path: &Path, head: &[u8]) -> Result<()> {
    let zip = head.starts_with(b"PK\x03\x04");
    // Pickle protocol 2 to 5 starts with PROTO (0x80) and the version; a safetensors file starts
    // with its little-endian header length, whose second byte is 0x02..0x05 only for headers of
    // exactly 0x80 + 256 * v bytes plus more, and then byte 8 is `{`.
    let pickle = head.len() >= 2
        && head[0] == 0x80
        && (2..=5).contains(&head[1])
        && head.get(8) != Some(&b'{');
    if zip || pickle {
        return Err(Error::Unsupported(format!(
            "{} is a PyTorch pickle ({}), which promptclip never loads (unpickling can run code); convert it to safetensors (e.g. safetensors.torch.save_file(torch.load(f), \"model.safetensors\"); prompts in a Dassl checkpoint, model.pth.tar-N: python scripts/dassl_to_safetensors.py)",
            path.display(),
            if zip { "a torch.save zip archive" } else { "pickle data" }
        )));
    }
    Ok(())
}

/// The first bytes of a file, to recognise its kind.
pub fn read_head(path: &Path) -> Result<Vec<u8>> {
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)
        .and_then(|f| f.take(16).read_to_end(&mut head))
        .map_err(|e| Error::io(path, e))?;
    Ok(head)
}

/// Whether promptclip reads a tensor of this dtype as floating point weights.
pub fn is_float_dtype(dtype: safetensors::Dtype) -> bool {
    use safetensors::Dtype as D;
    matches!(dtype, D::F16 | D::BF16 | D::F32 | D::F64)
}

/// The error for a tensor whose dtype promptclip cannot use as floating point values.
pub fn not_float(path: &Path, name: &str, dtype: impl std::fmt::Debug) -> Error {
    Error::Unsupported(format!(
        "{}: tensor `{name}` has dtype {dtype:?}; only F32, F16, BF16 and F64 tensors are read here",
        path.display()
    ))
}

/// Read all tensors and the string metadata of a safetensors file (pickles refused).
pub fn read_safetensors(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    refuse_pickle(path, &bytes[..bytes.len().min(16)])?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        Error::InvalidArgument(format!("{} is not a safetensors file: {e}", path.display()))
    })?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
        Error::InvalidArgument(format!(
            "{}: unreadable tensors: {}",
            path.display(),
            Error::from(e)
        ))
    })?;
    Ok((tensors, metadata))
}

/// Refuse tensors that are not floating point (learner files and checkpoints hold only
/// parameters and momentum), naming the first by name.
pub fn check_float_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    match named.into_iter().find(|(_, t)| {
        !matches!(
            t.dtype(),
            DType::F16 | DType::BF16 | DType::F32 | DType::F64
        )
    }) {
        Some((name, t)) => Err(not_float(path, name, t.dtype())),
        None => Ok(()),
    }
}

/// The first of `tensors` (by name) holding NaN or an infinity.
pub fn first_non_finite_tensor<'a>(
    tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>,
) -> Result<Option<String>> {
    let mut named: Vec<(&String, &Tensor)> = tensors.into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    for (name, t) in named {
        if !crate::clip::is_finite(t)? {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}
