// js-libp2p 3.x calls Promise.withResolvers (ES2024, Node.js 22+) and nothing else newer
// than Node.js 20 has. On Node.js 20 it is added here with its standard meaning; peer.mjs
// imports this module first, so it runs before any libp2p module is evaluated.
if (typeof Promise.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers () {
      let resolve
      let reject
      const promise = new this((res, rej) => {
        resolve = res
        reject = rej
      })
      return { promise, resolve, reject }
    }
  })
}
