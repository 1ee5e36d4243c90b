"""File storage: content-addressed blobs, storage records, upload URLs and `ctx.storage`."""

from .file_storage import (
    ActionStorage,
    FileRecord,
    FileStorage,
    StorageId,
    StorageReader,
    StorageWriter,
    UploadRejected,
    is_storage_id,
)

__all__ = [
    "ActionStorage", "FileRecord", "FileStorage", "StorageId", "StorageReader", "StorageWriter",
    "UploadRejected", "is_storage_id",
]
