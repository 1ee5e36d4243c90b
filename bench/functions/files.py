"""File storage: the storage benchmark gets an upload URL, then deletes what it uploaded."""

from corral import MutationCtx, StorageId, mutation


@mutation
def upload_url(ctx: MutationCtx) -> str:
    return ctx.storage.generate_upload_url()


@mutation
def remove(ctx: MutationCtx, storage_id: StorageId) -> None:
    ctx.storage.delete(storage_id)
