"""What a batch must pass before this node keeps, forwards or merges it (receive budgets,
the gate, the membership rule, the equivocation evidence the gate produces) and the
durable store of what it kept (`store`: batches, own seqs, outbox, repair cursors).
"""
