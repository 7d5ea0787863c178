"""Reconciliation of orders against payment settlement reports.

A report (Stripe itemized balance change, Adyen Settlement details, or the generic
CSV) settles the orders of one payment provider. Its rows become records of one type:
payment, refund, chargeback, chargeback_reversal (together: "returns"), fee, payout or
other. A payment or return is matched to an order of that provider whose
`payment_reference` equals the row's primary reference (Stripe: PaymentIntent id;
Adyen: PSP reference), or else its fallback (Stripe: charge id; Adyen: merchant
reference). Each row counts against one order at most: the order holding that
reference (PENDING or CONFIRMED: one per provider and reference; of orders that shared
one before migration 0004, the earliest holds it), else another PENDING or CONFIRMED
order with it, else the latest REJECTED or CANCELLED one (a client may retry a payment).

Every payment is classified as exactly one of (`engine.CATEGORIES`):

- matched: an order we keep (CONFIRMED, or still PENDING) settled once, in its
  currency, for its payment amount; or an order we turned down (REJECTED, CANCELLED)
  whose payments the report's returns give back in full.
- amount_mismatch: settled once, in the order's currency, for another amount.
- currency_mismatch: settled once, in another currency.
- duplicate_settlement: an order we keep with more than one payment row in the report.
- refund_due: an order we turned down whose payments, net of the report's returns,
  still leave money with us.
- missing_in_report: a CONFIRMED order created at or before the cutoff with no
  payment in the report and no settlement recorded by an earlier run. The cutoff is
  the latest row timestamp in the report unless one is given; a report without row
  timestamps needs one (never the time of the run).
- unknown_payment: payment rows whose reference matches no order (one per reference).
- refund_without_order: return rows whose reference matches no order (one per reference).

Returns for an order without a payment in the same report (the payment settled in
another report) are not a payment of this report and are not classified. Fees,
payouts and other rows only count in the per-currency totals: gross (what customers
paid, net of returns), fees, net, and payouts (money sent to the bank), in minor units.

Each order classified by a run gets its category as `payment_status` in the table
order_payment_status (with the run's id), in the same transaction that completes the run. A report that has malformed rows is refused whole.
"""
