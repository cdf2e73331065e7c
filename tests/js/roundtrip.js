// kafkajs against a running sediment broker: create a topic, produce keyed
// records with headers, consume them back in a consumer group, commit.
// Usage: node roundtrip.js BOOTSTRAP TOPIC COUNT GROUP
// Prints one JSON object on stdout; the pytest side makes the assertions.
'use strict'

const { Kafka, logLevel, CompressionTypes } = require('kafkajs')

const [bootstrap, topic, countArg, groupId] = process.argv.slice(2)
const count = parseInt(countArg, 10)

const kafka = new Kafka({
  clientId: 'sediment-e2e-kafkajs',
  brokers: [bootstrap],
  logLevel: logLevel.WARN,
  logCreator: () => ({ level, log }) => {
    process.stderr.write(`[kafkajs ${level}] ${JSON.stringify(log)}\n`)
  },
  retry: { retries: 5 }
})

async function main () {
  const admin = kafka.admin()
  await admin.connect()
  const created = await admin.createTopics({
    topics: [{ topic, numPartitions: 3, replicationFactor: 1 }],
    waitForLeaders: true
  })
  const listed = await admin.listTopics()
  const offsetsBefore = await admin.fetchTopicOffsets(topic)

  const producer = kafka.producer({ allowAutoTopicCreation: false })
  await producer.connect()
  const messages = []
  for (let i = 0; i < count; i++) {
    messages.push({
      key: `key-${i}`,
      value: `value-${i}`,
      headers: { seq: `${i}`, origin: 'kafkajs' },
      timestamp: `${1600000000000 + i}`
    })
  }
  const half = Math.floor(count / 2)
  const produced = []
  const r1 = await producer.send({ topic, acks: -1, messages: messages.slice(0, half) })
  const r2 = await producer.send({
    topic, acks: -1, compression: CompressionTypes.GZIP, messages: messages.slice(half)
  })
  produced.push(...r1, ...r2)
  await producer.disconnect()

  const consumer = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 500 })
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  const consumed = []
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`consumed ${consumed.length} of ${count}`)), 60000)
    consumer.run({
      autoCommit: true,
      eachMessage: async ({ partition, message }) => {
        const headers = {}
        for (const [k, v] of Object.entries(message.headers || {})) headers[k] = v.toString()
        consumed.push({
          partition,
          offset: message.offset,
          key: message.key && message.key.toString(),
          value: message.value && message.value.toString(),
          timestamp: message.timestamp,
          headers
        })
        if (consumed.length >= count) {
          clearTimeout(timer)
          resolve()
        }
      }
    }).catch(reject)
  })
  await consumer.commitOffsets([]).catch(() => {})
  await consumer.disconnect()

  const committed = await admin.fetchOffsets({ groupId, topics: [topic] })
  const offsetsAfter = await admin.fetchTopicOffsets(topic)
  await admin.disconnect()

  process.stdout.write(JSON.stringify({
    created, listed, offsetsBefore, offsetsAfter, produced, consumed, committed
  }) + '\n')
}

main().then(() => process.exit(0), (err) => {
  process.stderr.write(`kafkajs roundtrip failed: ${err && err.stack}\n`)
  process.exit(1)
})
