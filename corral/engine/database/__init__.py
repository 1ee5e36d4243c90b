"""`ctx.db`: documents, index ranges and pagination inside one transaction."""

from .documents import DatabaseReader, DatabaseWriter, IndexRange

__all__ = ["DatabaseReader", "DatabaseWriter", "IndexRange"]
