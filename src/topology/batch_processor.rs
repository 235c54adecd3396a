//! A batch processor: runs `handle_batch` on each batch and acknowledges it.

use std::sync::Arc;

use crate::handler::Handler;
use crate::source::Acknowledger;
use crate::topology::acknowledge::split_failed;
use crate::topology::batcher::Batch;
use crate::topology::guard::guarded;
use crate::topology::Context;

pub(crate) struct BatchProcessor<H: Handler, A> {
    pub(crate) ctx: Arc<Context<H, A>>,
    pub(crate) input: async_channel::Receiver<Batch<H::Item>>,
}

impl<H, A> BatchProcessor<H, A>
where
    H: Handler,
    A: Acknowledger<H::Item>,
{
    pub(crate) async fn run(self) {
        while let Ok((mut batch, info)) = self.input.recv().await {
            if let Err(failure) = guarded(self.ctx.handler.handle_batch(&mut batch, &info)).await {
                batch
                    .iter_mut()
                    .for_each(|message| message.set_failure(failure.clone()));
            }
            let (successful, failed) = split_failed(batch);
            self.ctx.acknowledge(successful, failed).await;
        }
    }
}
