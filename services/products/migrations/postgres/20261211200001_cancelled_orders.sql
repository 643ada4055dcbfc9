-- Orders heard cancelled, so an `order.placed` heard after its cancellation (a
-- redelivery in another order, `keel dlq retry`) reserves nothing.
CREATE TABLE IF NOT EXISTS products_cancelled_orders (
    order_id TEXT PRIMARY KEY
);
