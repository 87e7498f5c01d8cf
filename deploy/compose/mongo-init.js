// Runs once, when the MongoDB volume is first initialised (as the root user): creates the
// application user, which may only read and write the application's database.
const fs = require('fs');
const password = fs.readFileSync('/run/secrets/mongo_app_password', 'utf8').trim();
if (!password) {
  throw new Error('secrets/mongo_app_password is empty');
}
const appDb = process.env.MONGO_INITDB_DATABASE || 'weapp';
db.getSiblingDB(appDb).createUser({
  user: 'weapp',
  pwd: password,
  roles: [{ role: 'readWrite', db: appDb }],
});
