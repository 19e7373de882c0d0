// Generates tests/data/jcs/numbers.txt: "<ieee754 hex> <ECMAScript Number::toString>"
// for random finite doubles across all exponents; the reference for trail_jcs_number.
// usage: node tests/reference/gen_jcs_numbers.js > tests/data/jcs/numbers.txt
let s = 0x2545F491n;
function next() { // xorshift64*
  s ^= s >> 12n; s ^= (s << 25n) & 0xffffffffffffffffn; s ^= s >> 27n;
  return (s * 0x2545F4914F6CDD1Dn) & 0xffffffffffffffffn;
}
const b = Buffer.alloc(8);
let n = 0;
while (n < 2000) {
  let bits = next();
  if (n % 4 === 1) bits &= 0xfff0000000000000n | 0xffffn;      // short mantissas
  if (n % 4 === 2) bits = (bits & 0x800fffffffffffffn) | (BigInt(1023 + Number(next() % 80n) - 40) << 52n);
  b.writeBigUInt64BE(bits);
  const d = b.readDoubleBE(0);
  if (!Number.isFinite(d)) continue;
  console.log(bits.toString(16).padStart(16, '0') + ' ' + String(d));
  n++;
}
