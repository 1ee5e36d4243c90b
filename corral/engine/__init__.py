"""The reactive engine: tables, transactions, live queries and the Convex protocol."""
