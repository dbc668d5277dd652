"""The datasets the field benchmarks on, on demand: a registry, a resumable checked download, converters,
and the local files beside the repository (``../shared/data``)."""

from .download import ChecksumError, DownloadError, cache_dir, download, sha256_file
from .fetch import get, list_datasets
from .local import shared_data_dir
from .registry import CANONICAL_OBS, PUBLIC, DatasetRecord, RemoteFile, all_records, get_record

__all__ = ["CANONICAL_OBS", "PUBLIC", "ChecksumError", "DatasetRecord", "DownloadError", "RemoteFile",
           "all_records", "cache_dir", "download", "get", "get_record", "list_datasets", "sha256_file",
           "shared_data_dir"]
