// BullMQ through respite: a queue and its worker, a flow (parent and children, added in
// one MULTI of scripts), bulk adds, a delayed job and a repeatable job. Exits 0 when every
// job completed with the right result. Run by tests/suite/queues.rs:
//   node bullmq.mjs <port> <tenant> <password>
import { Queue, Worker, FlowProducer, QueueEvents } from 'bullmq';

const [port, username, password] = process.argv.slice(2);
const connection = { host: '127.0.0.1', port: Number(port), username, password, maxRetriesPerRequest: null };
const fail = (why) => { console.error(why); process.exit(1); };
setTimeout(() => fail('timed out'), 60000).unref();

const results = new Map();
const worker = new Worker('jobs', async (job) => job.data.n * 2, { connection });
worker.on('completed', (job, value) => results.set(job.id, value));
worker.on('failed', (job, err) => fail(`job ${job?.id} failed: ${err}`));
const children = new Worker('parts', async (job) => job.data.n + 1, { connection });
children.on('failed', (job, err) => fail(`child ${job?.id} failed: ${err}`));
const parents = new Worker('assembly', async (job) => {
  const got = Object.values(await job.getChildrenValues()).sort();
  return got.join(',');
}, { connection });
parents.on('failed', (job, err) => fail(`parent ${job?.id} failed: ${err}`));

const queue = new Queue('jobs', { connection });
const events = new QueueEvents('jobs', { connection });
await events.waitUntilReady();

const one = await queue.add('double', { n: 21 });
await queue.addBulk([1, 2, 3].map((n) => ({ name: 'double', data: { n } })));
const delayed = await queue.add('double', { n: 5 }, { delay: 200 });
await queue.add('double', { n: 7 }, { repeat: { every: 300, limit: 2 } });

const flow = new FlowProducer({ connection });
const tree = await flow.add({
  name: 'car', queueName: 'assembly',
  children: [1, 2].map((n) => ({ name: 'part', queueName: 'parts', data: { n } })),
});

const value = await one.waitUntilFinished(events, 20000);
if (value !== 42) fail(`job 1 returned ${value}`);
if (await delayed.waitUntilFinished(events, 20000) !== 10) fail('delayed job');
const parentEvents = new QueueEvents('assembly', { connection });
await parentEvents.waitUntilReady();
const car = await tree.job.waitUntilFinished(parentEvents, 20000);
if (car !== '2,3') fail(`flow returned ${car}`);
// The bulk jobs and the repeatable one: 1 + 3 + 1 + 1.
const deadline = Date.now() + 20000;
while (Date.now() < deadline) {
  const counts = await queue.getJobCounts('completed');
  if (counts.completed >= 6) break;
  await new Promise((r) => setTimeout(r, 100));
}
const counts = await queue.getJobCounts('completed', 'failed');
if (counts.completed < 6 || counts.failed !== 0) fail(`counts ${JSON.stringify(counts)}`);
const values = (await queue.getCompleted()).map((j) => j.returnvalue).sort((a, b) => a - b);
if (JSON.stringify(values.slice(0, 6)) !== '[2,4,6,10,14,42]') fail(`results ${values}`);
console.log(JSON.stringify({ completed: counts.completed, car, value }));
await Promise.all([worker.close(), children.close(), parents.close(), queue.close(), events.close(), parentEvents.close(), flow.close()]);
process.exit(0);
